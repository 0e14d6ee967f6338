"""Web frameworks report a raising view through their own logging: exactly one handled report whose
trace holds the view's frame. Real Flask (test client), Django (test client) and FastAPI under a
real uvicorn server, from the registry, in one cached venv per interpreter (the `web` fixture,
conftest.py), with the agent copied in; the recording backend.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

import support
from support import error_beacons, run, wait_error


def one_handled_report(backend, text: str, view: str) -> dict:
    [beacon] = wait_error(backend, text)
    backend.settle()
    assert len(error_beacons(backend)) == 1
    assert beacon["handled"] is True
    assert ", in %s\n" % view in beacon["trace"]
    return beacon


FLASK = """
from flask import Flask
app = Flask(__name__)


@app.route("/orders")
def orders_view():
    raise LookupError("boom-flask")


print("status", app.test_client().get("/orders").status_code)
"""


def test_flask_view(web, backend, sandbox):
    proc = run(web.python, [sandbox.script("shop.py", FLASK)], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and b"status 500" in proc.stdout, proc.stderr
    assert b"Exception on /orders [GET]" in proc.stderr  # Flask's own log line, unchanged
    beacon = one_handled_report(backend, "boom-flask", "orders_view")
    assert beacon["error_sig"].startswith("LookupError: boom-flask @ __main__.orders_view")


DJANGO = """
import sys
import django
from django.conf import settings
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"], SECRET_KEY="s" * 50,
                   MIDDLEWARE=[])
django.setup()
from django.test import Client
from django.urls import path


def invoice_view(request):
    raise ArithmeticError("boom-django")


urlpatterns = [path("invoice", invoice_view)]
raising = sys.argv[1] == "raise"
print("status", Client(raise_request_exception=raising).get("/invoice").status_code)
"""


def test_django_view(web, backend, sandbox):
    script = sandbox.script("billing.py", DJANGO)
    proc = run(web.python, [script, "answer"], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and b"status 500" in proc.stdout, proc.stderr
    one_handled_report(backend, "boom-django", "invoice_view")


def test_django_view_raised_into_the_test_is_still_one_report(web, backend, sandbox):
    """The test client logs the error (django.request) and then raises it in the caller."""
    script = sandbox.script("billing.py", DJANGO)
    proc = run(web.python, [script, "raise"], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1 and b"ArithmeticError: boom-django" in proc.stderr
    one_handled_report(backend, "boom-django", "invoice_view")


FASTAPI = """
from fastapi import FastAPI
app = FastAPI()


@app.get("/report")
def report_view():
    raise RuntimeError("boom-fastapi")
"""


def test_fastapi_under_uvicorn(web, backend, sandbox):
    sandbox.script("api.py", FASTAPI)
    command = [str(web.python), "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", "0"]
    with support.serving(command, sandbox.env(backend.url), sandbox.work, r"Uvicorn running on (http://\S+)") as url:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/report", timeout=30)
        assert answer.value.code == 500
        one_handled_report(backend, "boom-fastapi", "report_view")
