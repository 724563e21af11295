"""The connection to Kaggle: signing in, and every call made through it (downloads in pipeline/kaggle/download.py,
submissions and scores in pipeline/kaggle/submit.py).

The only module that imports `kaggle`, and only inside functions: importing the package authenticates
(and with an access token, contacts the server). Credentials are checked first (pipeline/kaggle/credentials.py)
so that a missing set-up gives the steps to fix it; every text the package prints or raises passes through
`scrub` so that no key or token reaches the terminal, a log or the ledger.
"""
from __future__ import annotations

import contextlib
import sys

from pipeline.errors import UserError
from pipeline.kaggle.credentials import SETUP_STEPS, Credentials, ScrubbingStream, find_credentials, scrub
from pipeline.plugin.api import Competition

# The package sets no HTTP timeout: a server that accepts and never answers would hang a command forever.
DEFAULT_HTTP_TIMEOUT_S = 60.0  # read timeout per request (per block while downloading)
CONNECT_TIMEOUT_S = 10.0


class KaggleError(UserError):
    """Kaggle refused or failed a request; the message says why and never contains a credential."""


class KaggleTimeout(KaggleError):
    """Kaggle did not answer within the HTTP timeout."""


@contextlib.contextmanager
def http_timeouts(read_s: float, connect_s: float = CONNECT_TIMEOUT_S):
    """Give every HTTP request made inside the block a (connect, read) timeout.

    The package (and kagglesdk under it) sends with no timeout, or its own 300 s per download block; all
    of its requests go through `requests.adapters.HTTPAdapter.send`, so the timeout is set there, for the
    duration of one call, without changing the package.
    """
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send
    timeout = (min(connect_s, read_s), read_s)

    def send(self, request, *args, **kwargs):
        if len(args) >= 2:  # send(request, stream, timeout, ...)
            args = (args[0], timeout, *args[2:])
        else:
            kwargs["timeout"] = timeout
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


@contextlib.contextmanager
def kaggle_call(credentials: Credentials, what: str, competition: Competition | None = None,
                 timeout_s: float = DEFAULT_HTTP_TIMEOUT_S):
    """Run package code with scrubbed output and HTTP timeouts; turn its exceptions into KaggleError with an
    actionable message."""
    import requests  # a dependency of kaggle; its exceptions are what the package raises

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbingStream(out, credentials), ScrubbingStream(err, credentials)
    try:
        with http_timeouts(timeout_s):
            yield
    except requests.Timeout:
        raise KaggleTimeout(f"{what}: Kaggle did not answer within {timeout_s:g}s; try again later "
                            "(--http-timeout sets the limit)") from None
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else None
        detail = scrub(str(error), credentials)
        if code == 401:
            raise KaggleError(
                f"{what}: Kaggle rejected the credentials from {credentials.source} (HTTP 401). The key may be revoked "
                f"or mistyped: create a new one at https://www.kaggle.com/settings/api and replace it ({detail})"
            ) from None
        if code == 403 and competition is not None:
            raise KaggleError(
                f"{what}: Kaggle refused access (HTTP 403); accept the rules at "
                f"https://www.kaggle.com/competitions/{competition.kaggle_slug}/rules and try again ({detail})"
            ) from None
        if code == 404 and competition is not None:
            raise KaggleError(f"{what}: Kaggle has no competition {competition.kaggle_slug!r} (HTTP 404) ({detail})") \
                from None
        raise KaggleError(f"{what}: Kaggle answered HTTP {code} ({detail})") from None
    except requests.RequestException as error:
        detail = scrub(str(error), credentials)
        raise KaggleError(f"{what}: could not reach Kaggle ({detail}); check the network and try again") from None
    except KaggleError:
        raise
    except Exception as error:  # anything else the package raises: its text may quote a credential
        raise KaggleError(f"{what}: {type(error).__name__}: {scrub(str(error), credentials)}") from None
    finally:
        sys.stdout, sys.stderr = out, err


def kaggle_api(timeout_s: float = DEFAULT_HTTP_TIMEOUT_S):
    """(authenticated KaggleApi, Credentials); the one place `kaggle` is imported."""
    credentials = find_credentials()
    with kaggle_call(credentials, "signing in to Kaggle", timeout_s=timeout_s):
        import kaggle  # authenticates on import

        api = kaggle.api
        if not api._authenticated:  # the package swallows its own failure at import time; try again loudly
            try:
                api.authenticate()
            except SystemExit:
                raise KaggleError(f"Kaggle did not accept the credentials from {credentials.source}.\n{SETUP_STEPS}") \
                    from None
    return api, credentials


def competition_slug(competition: Competition) -> str:
    """The competition's name in Kaggle's API; a UserError for a plugin that is not a Kaggle competition."""
    if not competition.kaggle_slug:
        raise UserError(f"competition {competition.name!r} is not a Kaggle competition (its plugin has no kaggle_slug)")
    return competition.kaggle_slug
