"""The agent's boundaries that no compiler checks: functions reached by their name as a string, and
the globals of the start-up part's functions.

Both fail silently when wrong: _call_agent swallows the KeyError of a renamed handler (the agent
just stops reporting), and a start-up function using a global that only the loader or the agent
proper defines raises a NameError inside a hook, where it is swallowed too. Names are found in the
source, so entries added later are checked too.
"""

from __future__ import annotations

import ast
import builtins
import symtable
from pathlib import Path

import corp_error_agent as agent
from agent_whole import whole_source

AGENT_FILE = Path(agent.__file__)
WHOLE = ast.parse(whole_source(AGENT_FILE.read_text(encoding="utf-8")))
START_UP = AGENT_FILE.read_text(encoding="utf-8")  # as Python compiles it: the agent proper is a string
REACHING = {"_call_agent"}  # it calls the agent function named by its first argument


def _string(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _patch_entries(text) -> list:
    """The "module=function" entries of a _PATCHES string, as (module, function)."""
    return [tuple(entry.split("=")) for entry in text.split()]


def _callee(node: ast.Call) -> str:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")


def _is_globals_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"


def names_reached_by_string() -> dict:
    """{function name: where it is named} for every name handed to _call_agent (directly, as a
    thread's target with args, or to atexit), chosen as the start-up part's handler, stored in
    _PATCHES, or looked up in globals() by a constant (the start-up part reaching the loader)."""
    found = {}
    for node in ast.walk(WHOLE):
        names = []
        if isinstance(node, ast.Call):
            callee = _callee(node)
            if callee in REACHING and node.args:
                names.append(_string(node.args[0]))
            elif len(node.args) >= 2 and getattr(node.args[0], "attr", getattr(node.args[0], "id", "")) in REACHING:
                # handed on with its name: atexit.register(agent._call_agent, "...")
                names.append(_string(node.args[1]))
            keywords = {k.arg: k.value for k in node.keywords}
            target, args = keywords.get("target"), keywords.get("args")
            if isinstance(target, ast.Name) and target.id in REACHING and isinstance(args, ast.Tuple) and args.elts:
                names.append(_string(args.elts[0]))
        elif isinstance(node, ast.Subscript) and _is_globals_call(node.value):
            names.append(_string(getattr(node.slice, "value", node.slice)))  # (3.8 wraps it in ast.Index)
        elif isinstance(node, ast.Compare) and any(_is_globals_call(c) for c in node.comparators):
            names.append(_string(node.left))
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            targets = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            named = {t.id for t in targets if isinstance(t, ast.Name)}
            if "_PATCHES" in named and _string(node.value) is not None:
                names += [function for _, function in _patch_entries(_string(node.value))]
            elif "handler" in named:  # the start-up part's: the hook's agent function
                names += [_string(v) for v in values if (_string(v) or "").startswith("_on")]
        for name in names:
            if name is not None and not name.startswith("__"):
                found.setdefault(name, "line %d" % node.lineno)
    return found


def _start_up_functions() -> set:
    """Names of the functions in the start-up part's byte code (the file as Python compiles it)."""
    code = compile(START_UP, str(AGENT_FILE), "exec")
    return {c.co_name for c in code.co_consts if hasattr(c, "co_name")}


def test_every_function_reached_by_name_is_defined_in_the_agent_proper():
    proper = ast.parse(agent._agent_source())  # the loader and the rest of the agent proper
    defined = {node.name for node in proper.body if isinstance(node, ast.FunctionDef)}
    reached = names_reached_by_string()
    # the search finds what is known to be there: the hooks, the patches, the workers, the loader
    assert {
        "_on_exception",
        "_on_thread_exception",
        "_patch_asyncio",
        "_patch_multiprocessing",
        "_patch_traceback",
        "_at_exit",
        "_drain",
        "_ask_for_hint",
        "_on_error",
        "_attribute",
    } <= set(reached)
    assert "_on_logged_error" in reached
    # the logging patch is the one entry of _PATCHES the start-up part applies itself (it is cheap
    # and every program imports logging), so the agent proper has no function of that name
    missing = {name: where for name, where in reached.items() if name not in defined}
    assert set(missing) == {"_patch_logging"}, "reached by name but not defined in the agent proper: %r" % missing
    assert '"_patch_logging"' in START_UP[: START_UP.index("\nr" + "'" * 3)]


def test_patches_name_functions_of_the_agent_proper_at_run_time():
    agent._load()
    patches = dict(_patch_entries(agent._PATCHES))
    assert "asyncio.base_events" in patches
    assert all(callable(getattr(agent, name, None)) for name in patches.values() if name != "_patch_logging")


def _function_tables(table):
    for child in table.get_children():
        if child.get_type() == "function":
            yield child
        yield from _function_tables(child)


def test_start_up_functions_find_every_global_they_use_in_the_start_up_part():
    # The hooks run before anything is loaded, so a start-up function may use only what the
    # start-up part itself binds; and `os` is not among it (see the start-up part's why).
    module = symtable.symtable(START_UP, str(AGENT_FILE), "exec")
    start_up = _start_up_functions()
    assert start_up == {"_entry"}  # one function: see the start-up part's why
    bound = {s.get_name() for s in module.get_symbols() if s.is_assigned() or s.is_imported()}
    assert {"activate", "find_spec", "__getattr__"} <= bound and "os" not in bound
    tables = [t for t in module.get_children() if t.get_name() in start_up]
    assert [nested.get_name() for t in tables for nested in _function_tables(t)] == []
    available = bound | set(vars(builtins)) | {"__file__", "__name__"}
    missing = {t.get_name(): sorted(set(t.get_globals()) - available) for t in tables}
    assert {name: names for name, names in missing.items() if names} == {}, (
        "globals the start-up functions use that the start-up part does not bind"
    )
