"""Keystone (OpenStack Identity v3) logins for Swift, with keystoneauth1.

:class:`KeystoneLogin` is what python-swiftclient calls a ``session``: its Connection asks it
for the storage URL (``get_endpoint``), then the token (``get_token``), whenever it has none, and
calls ``invalidate`` when Swift answers 401.  Each ``get_endpoint`` is a fresh login (a password
or an application credential, through keystoneauth1's identity plugins) whose object-store
endpoint is picked from the token's catalog by interface (``public``, ``internal``, ``admin``)
and region; ``get_token`` hands over the token of that same login (per thread).  Connections
between logins reuse the last token (:class:`~goblinfs.storage.swift.session.SwiftSession`), so
a login happens at start and after Swift refused a token (expired or revoked).

Errors come out as the rest of the Swift layer expects them:

* the login refused (401/403: wrong password, unknown user, project or domain, no role on the
  project, a revoked application credential) -> swiftclient ``ClientException`` with that status,
  which the session reports as :class:`~goblinfs.storage.swift.session.AuthenticationFailed`;
* Keystone unreachable or timing out -> ``ConnectionError`` / ``TimeoutError``; Keystone 5xx, 408
  or 429 -> ``ClientException`` with the status: transient, retried like any Swift request;
* no object-store endpoint for the interface and region, a 400/404 from Keystone (wrong auth
  URL, a name without its domain) -> :class:`~goblinfs.storage.StorageConfigError`: never retried.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Any

from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from swiftclient.client import ClientException

from .. import StorageConfigError

log = logging.getLogger(__name__)

SERVICE_TYPE = "object-store"
INTERFACES = ("public", "internal", "admin")
#: Statuses of a login worth another attempt (as for Swift requests).
_TRANSIENT = frozenset({408, 429})


def v3_auth_url(auth_url: str) -> str:
    """The identity v3 URL: ``auth_url`` as given if its path ends in ``/v3``, else with ``/v3`` added
    (a versionless Keystone URL such as ``https://keystone.example.org:5000/``)."""
    path = urllib.parse.urlsplit(auth_url).path.rstrip("/")
    if path.rsplit("/", 1)[-1] in ("v3", "v3.0"):
        return auth_url.rstrip("/")
    return auth_url.rstrip("/") + "/v3"


def normalize_interface(value: str | None) -> str:
    """``public``/``internal``/``admin`` from an endpoint type (``publicURL`` etc. accepted).

    Raises StorageConfigError for anything else.
    """
    text = (value or "public").strip().lower()
    if text.endswith("url"):
        text = text[:-3]
    if text not in INTERFACES:
        raise StorageConfigError(f"endpoint_type must be one of {', '.join(INTERFACES)}, not {value!r}")
    return text


class KeystoneLogin:
    """Logs in to Keystone v3 and finds Swift's endpoint in the catalog (a swiftclient ``session``).

    Exactly one way of logging in: a password (``user`` with ``password`` and ``project_name``,
    names resolved in ``user_domain_name`` / ``project_domain_name``, both ``Default`` when not
    given) or an application credential (``application_credential_id`` and
    ``application_credential_secret``; the credential carries its project).  ``interface`` and
    ``region_name`` select the endpoint (no region: the first endpoint of that interface).
    ``timeout`` bounds each HTTP request to Keystone.  Thread-safe.
    """

    def __init__(self, auth_url: str, *, user: str | None = None, password: str | None = None,
                 project_name: str | None = None, project_domain_name: str | None = None,
                 user_domain_name: str | None = None, application_credential_id: str | None = None,
                 application_credential_secret: str | None = None, region_name: str | None = None,
                 interface: str = "public", timeout: float = 10.0) -> None:
        self.auth_url = v3_auth_url(auth_url)
        self.region_name = region_name or None
        self.interface = normalize_interface(interface)
        self.timeout = timeout
        self.application_credential = bool(application_credential_id or application_credential_secret)
        if self.application_credential:
            if not (application_credential_id and application_credential_secret):
                raise StorageConfigError("an application credential needs both application_credential_id "
                                         "and application_credential_secret")
            self.who = f"application credential {application_credential_id!r}"
            self._plugin_args: dict[str, Any] = {
                "application_credential_id": application_credential_id,
                "application_credential_secret": application_credential_secret}
        else:
            if not (user and password and project_name):
                raise StorageConfigError("auth_version 3 needs cloudfiles_user, cloudfiles_api_key (the password) "
                                         "and project_name, or application_credential_id and "
                                         "application_credential_secret")
            user_domain = user_domain_name or "Default"
            project_domain = project_domain_name or "Default"
            self.who = (f"user {user!r} (domain {user_domain!r}) for project {project_name!r} "
                        f"(domain {project_domain!r})")
            self._plugin_args = {"username": user, "password": password, "user_domain_name": user_domain,
                                 "project_name": project_name, "project_domain_name": project_domain}
        self._http = ksa_session.Session(timeout=timeout)
        self._last = threading.local()

    def __repr__(self) -> str:
        return f"<KeystoneLogin {self.who} at {self.auth_url} {self.interface} {self.region_name or '(any region)'}>"

    def _plugin(self) -> v3.Auth:
        if self.application_credential:
            return v3.ApplicationCredential(auth_url=self.auth_url, **self._plugin_args)
        return v3.Password(auth_url=self.auth_url, **self._plugin_args)

    def login(self) -> tuple[str, str]:
        """A new token and the storage URL from its catalog; errors as the module docstring says."""
        try:
            access = self._plugin().get_auth_ref(self._http)
        except ksa_exc.HttpError as exc:
            status = exc.http_status
            detail = (exc.message or str(exc)).strip()
            if status in (401, 403):
                raise ClientException(f"Keystone refused the login: {detail}", http_status=status,
                                      http_reason=exc.message) from exc
            if status is not None and (status >= 500 or status in _TRANSIENT):
                raise ClientException(f"Keystone at {self.auth_url} failed: {detail}", http_status=status) from exc
            raise StorageConfigError(f"Keystone at {self.auth_url} answered HTTP {status} to the login of "
                                     f"{self.who}: {detail}") from None
        except (ksa_exc.ConnectTimeout, ksa_exc.RequestTimeout) as exc:
            raise TimeoutError(f"Keystone at {self.auth_url} timed out: {exc}") from exc
        except ksa_exc.ConnectionError as exc:
            raise ConnectionError(f"cannot reach Keystone at {self.auth_url}: {exc}") from exc
        except ksa_exc.ClientException as exc:
            raise StorageConfigError(f"Keystone login at {self.auth_url} failed: {exc}") from None
        url = self._endpoint(access)
        token = access.auth_token
        if not token:
            raise ClientException(f"Keystone at {self.auth_url} answered the login without a token", http_status=502)
        log.debug("Keystone login of %s: storage URL %s", self.who, url)
        return url, token

    def _endpoint(self, access: Any) -> str:
        catalog = access.service_catalog
        try:
            url = catalog.url_for(service_type=SERVICE_TYPE, interface=self.interface, region_name=self.region_name)
        except ksa_exc.EndpointNotFound:
            url = None
        if url:
            return str(url)
        offered = sorted(
            f"{endpoint.get('interface')}/{endpoint.get('region_id') or endpoint.get('region')}"
            for service in catalog.normalize_catalog() if service.get("type") == SERVICE_TYPE
            for endpoint in service.get("endpoints", []))
        region = f"region {self.region_name!r}" if self.region_name else "any region"
        raise StorageConfigError(
            f"Keystone's catalog for {self.who} has no {SERVICE_TYPE} endpoint of interface {self.interface!r} "
            f"in {region} (it has: {', '.join(offered) or 'none'}); check region_name and endpoint_type")

    # ------------------------------------------------------------ swiftclient's session interface

    def get_endpoint(self, **_kwargs: Any) -> str:
        """Log in; the storage URL (swiftclient asks for it first, then for the token)."""
        url, token = self.login()
        self._last.token = token
        return url

    def get_token(self) -> str:
        """The token of this thread's last login (one is made if there is none)."""
        token = getattr(self._last, "token", None)
        if token is None:
            _url, token = self.login()
        self._last.token = None
        return str(token)

    def invalidate(self) -> bool:
        """Swift refused the token: the next get_endpoint logs in again (always True: retry)."""
        self._last.token = None
        return True
