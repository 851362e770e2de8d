"""Range checks on every integer field of a request, done once for every service.

Protobuf's unsigned 64-bit types carry values no backend of ours can hold: SQLite's
INTEGER, PostgreSQL's BIGINT and torch's int64 all stop at 2**63 - 1, and a larger
cursor or version used to surface as INTERNAL ("Python int too large to convert to
SQLite INTEGER") from deep inside SQLAlchemy. The server interceptor walks each
request by its descriptor before any handler runs, so every RPC of every service
answers INVALID_ARGUMENT naming the field instead. Narrower types need no check:
protobuf itself keeps int32/uint32 and signed 64-bit values inside their ranges.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import InvalidArgument

INT64_MAX = 2**63 - 1
"""The largest integer any request field may carry: what every backend stores."""

_UNSIGNED_64 = frozenset({FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _scalar_error(field: FieldDescriptor, name: str, value: object) -> str | None:
    if field.type in _UNSIGNED_64 and isinstance(value, int) and value > INT64_MAX:
        return f"{name} = {value} is out of range: 64-bit integers must be <= {INT64_MAX} (2^63-1)"
    return None


def range_error(message: Message, prefix: str = "") -> str | None:
    """The first out-of-range integer field of `message` (recursively), described; None if all fit."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                for key in value:
                    error = _scalar_error(key_field, f"{name}[key]", key)
                    if error is None and value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        error = range_error(value[key], f"{name}[{key!r}].")
                    elif error is None:
                        error = _scalar_error(value_field, f"{name}[{key!r}]", value[key])
                    if error:
                        return error
                continue
            items = value if _is_repeated(field) else (value,)
            for i, item in enumerate(items):
                error = range_error(item, f"{name}[{i}]." if _is_repeated(field) else f"{name}.")
                if error:
                    return error
        else:
            for i, item in enumerate(value if _is_repeated(field) else (value,)):
                error = _scalar_error(field, f"{name}[{i}]" if _is_repeated(field) else name, item)
                if error:
                    return error
    return None


def check_ranges(message: object) -> None:
    """Raises InvalidArgument if an integer field of a request message is out of range."""
    if isinstance(message, Message):
        error = range_error(message)
        if error:
            raise InvalidArgument(error)
