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
REACHING = {"_call_agent", "_reach_agent"}  # they call the agent function named by their first argument


def _string(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _callee(node: ast.Call) -> str:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")


def _is_globals_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"


def names_reached_by_string() -> dict:
    """{function name: where it is named} for every name handed to _chain, _call_agent,
    _reach_agent (directly, or as a thread's target with args), stored in _PATCHES, or looked up
    in globals() by a constant (the start-up part reaching the loader)."""
    found = {}
    for node in ast.walk(WHOLE):
        names = []
        if isinstance(node, ast.Call):
            callee = _callee(node)
            if callee == "_chain" and len(node.args) >= 2:
                names.append(_string(node.args[1]))
            elif callee in REACHING and node.args:
                names.append(_string(node.args[0]))
            elif len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in REACHING:
                names.append(_string(node.args[1]))  # handed on with its name: atexit.register(_reach_agent, "...")
            keywords = {k.arg: k.value for k in node.keywords}
            target, args = keywords.get("target"), keywords.get("args")
            if isinstance(target, ast.Name) and target.id in REACHING and isinstance(args, ast.Tuple) and args.elts:
                names.append(_string(args.elts[0]))
        elif isinstance(node, ast.Subscript) and _is_globals_call(node.value):
            names.append(_string(getattr(node.slice, "value", node.slice)))  # (3.8 wraps it in ast.Index)
        elif isinstance(node, ast.Compare) and any(_is_globals_call(c) for c in node.comparators):
            names.append(_string(node.left))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_PATCHES" for t in node.targets):
            names += [_string(value) for value in node.value.values] if isinstance(node.value, ast.Dict) else []
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", None) == "_PATCHES":
                    names.append(_string(node.value))
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
    # the logging patch is the one entry of _PATCHES the start-up part applies itself (it is cheap
    # and every program imports logging), so it is a start-up function instead
    start_up = _start_up_functions()
    missing = {name: where for name, where in reached.items() if name not in defined and name not in start_up}
    assert missing == {}, "reached by name but not defined in the agent proper: %r" % missing
    assert {name for name in reached if name in start_up} == {"_patch_logging"}


def test_patches_name_functions_of_the_agent_proper_at_run_time():
    agent._load()
    assert all(callable(getattr(agent, name, None)) for name in agent._PATCHES.values())


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
    assert {
        "activate",
        "_chain",
        "_find_spec",
        "_reach_agent",
        "_patch_logging",
        "_cache_dir",
        "__getattr__",
    } <= start_up
    bound = {s.get_name() for s in module.get_symbols() if s.is_assigned() or s.is_imported()}
    assert start_up <= bound and "os" not in bound
    tops = [t for t in module.get_children() if t.get_name() in start_up]
    assert {t.get_name() for t in tops} == start_up
    tables = tops + [nested for t in tops for nested in _function_tables(t)]
    assert {t.get_name() for t in tables} >= {"hook", "exec_and_patch", "callHandlers"}
    available = bound | set(vars(builtins)) | {"__file__", "__name__"}
    missing = {t.get_name(): sorted(set(t.get_globals()) - available) for t in tables}
    assert {name: names for name, names in missing.items() if names} == {}, (
        "globals the start-up functions use that the start-up part does not bind"
    )
