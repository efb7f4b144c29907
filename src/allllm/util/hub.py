"""Whether the Hugging Face Hub answers at all: asked once, without retries, before a hub load.

Offline, huggingface_hub answers a failed metadata request (``HEAD .../resolve``) by
asking again with ``retry_on_errors=True``: five more tries with 1-2-4-8-8 s of
backoff and a 60 s timeout each, a "Retrying in Ns" warning every time — and
transformers does that once per file it wants. One tokenizer load took ~50 s
and printed two dozen lines before failing. So hub loads ask here first: one
metadata request with the library's retries off, bounded by ``HF_HUB_ETAG_TIMEOUT``
(10 s by default). When the Hub cannot be reached the caller loads with
``local_files_only=True`` (the HF cache may hold the files); setting
``HF_HUB_OFFLINE`` after huggingface_hub was imported would change nothing, it
reads the variable at import. Online this costs one extra HEAD request and real
downloads keep the library's own retries. An endpoint found unreachable is
remembered for a few minutes, so the next loads of the same command (the
tokenizer, then ``model.init_from``) do not ask again, while a long-lived
Python session still notices when the network comes back.
"""

from __future__ import annotations

import inspect
import socket
import time
from typing import Any

# endpoint (HF_ENDPOINT) -> when this process found it unreachable (time.monotonic)
_UNREACHABLE: dict[str, float] = {}
_REMEMBER_S = 300.0

# transport-level failures (no HTTP answer) of the HTTP stacks huggingface_hub has used
_HTTP_LIBRARIES = frozenset({"httpx", "httpx2", "httpcore", "requests", "urllib3"})
_TRANSPORT_ERRORS = frozenset(
    {
        "TransportError",
        "NetworkError",
        "ConnectError",
        "ConnectTimeout",
        "TimeoutException",
        "ProxyError",
        "ConnectionError",
        "Timeout",
        "NewConnectionError",
        "MaxRetryError",
    }
)
# huggingface_hub's own "could not get it from the Hub, and it is not cached" errors
_OFFLINE_ERRORS = frozenset({"OfflineModeIsEnabled", "LocalEntryNotFoundError"})


def _one_is_connection_error(exc: BaseException) -> bool:
    mro = type(exc).__mro__
    if any(cls.__name__ in _OFFLINE_ERRORS for cls in mro):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return any(
        cls.__module__.split(".")[0] in _HTTP_LIBRARIES and cls.__name__ in _TRANSPORT_ERRORS
        for cls in mro
    )


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` and what it was raised from say the Hub was not reached at all.

    Covers requests/httpx connection and timeout errors, huggingface_hub's
    ``OfflineModeIsEnabled`` / ``LocalEntryNotFoundError`` and transformers'
    ``OSError("We couldn't connect to ...")`` raised from the latter. An HTTP
    answer anywhere in the chain (401, 404, 5xx) means it was reached: the
    library also wraps a 5xx in "could not connect", and that is not offline.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(getattr(link, "response", None) is not None for link in chain):
        return False
    return any(_one_is_connection_error(link) for link in chain)


def _constants() -> Any:
    from huggingface_hub import constants

    return constants


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub read it at import."""
    constants = _constants()
    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else getattr(constants, "HF_HUB_OFFLINE", False))


def endpoint() -> str:
    """The Hub address in use (``HF_ENDPOINT``, default https://huggingface.co)."""
    return str(_constants().ENDPOINT)


def cache_dir() -> str:
    """Where huggingface_hub caches downloads (``HF_HUB_CACHE``, by default under ``HF_HOME``)."""
    return str(_constants().HF_HUB_CACHE)


def note_unreachable() -> None:
    """Remember that the current endpoint did not answer (a load failed on a connection error)."""
    _UNREACHABLE[endpoint()] = time.monotonic()


def _known_unreachable() -> bool:
    since = _UNREACHABLE.get(endpoint())
    return since is not None and time.monotonic() - since < _REMEMBER_S


def hub_reachable(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """One metadata request for ``filename`` of ``repo_id``, no retries: did the Hub answer?

    Any HTTP answer, even 404 or 401, counts as reached (the real load then
    reports it); only a failure to connect, a timeout or offline mode is False.
    """
    if offline_mode() or _known_unreachable():
        return False
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    constants = _constants()
    kwargs: dict[str, Any] = {"timeout": getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10)}
    if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
        kwargs["retry_on_errors"] = False  # the default today; said so in case it changes
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), **kwargs)
    except Exception as exc:  # any answer but "not reached" is the real load's to report
        if is_connection_error(exc):
            note_unreachable()
            return False
    return True
