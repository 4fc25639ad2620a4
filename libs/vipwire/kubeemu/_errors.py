"""API errors as the Kubernetes API server reports them: ``Status`` objects.

Messages and ``details`` follow the real server's wording so that client code
which logs or matches on them behaves the same against the emulator.
"""

from __future__ import annotations

from typing import Any

from vipwire.kubeemu._resources import ResourceType


class ApiError(Exception):
    """A failed request; :meth:`status` is the ``Status`` body the server sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"

    # --- constructors for the errors the emulator raises -----------------------

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(404, "NotFound", f'{rt.group_resource} "{name}" not found', _details(rt, name))

    @classmethod
    def already_exists(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(
            409, "AlreadyExists", f'{rt.group_resource} "{name}" already exists', _details(rt, name)
        )

    @classmethod
    def conflict(cls, rt: ResourceType, name: str, why: str) -> ApiError:
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
            _details(rt, name),
        )

    @classmethod
    def stale(cls, rt: ResourceType, name: str) -> ApiError:
        return cls.conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version "
            "and try again",
        )

    @classmethod
    def invalid(cls, rt: ResourceType, name: str, causes: list[FieldError]) -> ApiError:
        text = ", ".join(c.text() for c in causes)
        details: dict[str, Any] = {
            "name": name,
            "kind": rt.kind,
            "causes": [c.cause() for c in causes],
        }
        if rt.group:
            details["group"] = rt.group
        return cls(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details)

    @classmethod
    def forbidden(cls, rt: ResourceType, name: str, why: str) -> ApiError:
        return cls(
            403,
            "Forbidden",
            f'{rt.group_resource} "{name}" is forbidden: {why}',
            _details(rt, name),
        )

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def expired(cls, message: str) -> ApiError:
        return cls(410, "Expired", message)

    @classmethod
    def unprocessable(cls, message: str) -> ApiError:
        # What the server answers when a JSON patch cannot be applied.
        return cls(422, "Invalid", message)


class FieldError:
    """One cause of an ``Invalid`` error (``metav1.StatusCause``)."""

    _REASONS = {
        "Required value": "FieldValueRequired",
        "Invalid value": "FieldValueInvalid",
        "Unsupported value": "FieldValueNotSupported",
        "Duplicate value": "FieldValueDuplicate",
        "Forbidden": "FieldValueForbidden",
        "Too long": "FieldValueTooLong",
    }

    def __init__(self, field: str, kind: str, detail: str = "", value: Any = None) -> None:
        self.field = field
        self.kind = kind
        self.detail = detail
        self.value = value

    def text(self) -> str:
        parts = [f"{self.field}: {self.kind}"]
        if self.value is not None:
            parts[0] += f": {_go_quote(self.value)}"
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)

    def cause(self) -> dict[str, Any]:
        return {
            "reason": self._REASONS.get(self.kind, "FieldValueInvalid"),
            "message": self.text().split(": ", 1)[1],
            "field": self.field,
        }


def _go_quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details
