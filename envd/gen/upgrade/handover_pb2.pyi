from envd.gen.process import process_pb2 as _process_pb2
from envd.gen.filesystem import filesystem_pb2 as _filesystem_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandoverState(_message.Message):
    __slots__ = ("schema", "from_ver", "processes", "terminated", "watchers", "mounts", "forwards", "guest_frozen_cgroups")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    FROM_VER_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    FORWARDS_FIELD_NUMBER: _ClassVar[int]
    GUEST_FROZEN_CGROUPS_FIELD_NUMBER: _ClassVar[int]
    schema: int
    from_ver: str
    processes: _containers.RepeatedCompositeFieldContainer[HandoverProc]
    terminated: _containers.RepeatedCompositeFieldContainer[HandoverExit]
    watchers: _containers.RepeatedCompositeFieldContainer[HandoverWatcher]
    mounts: _containers.RepeatedCompositeFieldContainer[MountEntry]
    forwards: _containers.RepeatedCompositeFieldContainer[ForwardedPort]
    guest_frozen_cgroups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, schema: _Optional[int] = ..., from_ver: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[HandoverProc, _Mapping]]] = ..., terminated: _Optional[_Iterable[_Union[HandoverExit, _Mapping]]] = ..., watchers: _Optional[_Iterable[_Union[HandoverWatcher, _Mapping]]] = ..., mounts: _Optional[_Iterable[_Union[MountEntry, _Mapping]]] = ..., forwards: _Optional[_Iterable[_Union[ForwardedPort, _Mapping]]] = ..., guest_frozen_cgroups: _Optional[_Iterable[str]] = ...) -> None: ...

class MountEntry(_message.Message):
    __slots__ = ("path", "lifecycle_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    lifecycle_id: str
    def __init__(self, path: _Optional[str] = ..., lifecycle_id: _Optional[str] = ...) -> None: ...

class ForwardedPort(_message.Message):
    __slots__ = ("key", "port", "listener_pid", "family", "socat_pid")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LISTENER_PID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SOCAT_PID_FIELD_NUMBER: _ClassVar[int]
    key: str
    port: int
    listener_pid: int
    family: int
    socat_pid: int
    def __init__(self, key: _Optional[str] = ..., port: _Optional[int] = ..., listener_pid: _Optional[int] = ..., family: _Optional[int] = ..., socat_pid: _Optional[int] = ...) -> None: ...

class HandoverProc(_message.Message):
    __slots__ = ("pid", "tag", "has_tag", "cg_type", "config", "stdout_fd", "stderr_fd", "stdin_fd", "tty_fd", "timeout_ms")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    HAS_TAG_FIELD_NUMBER: _ClassVar[int]
    CG_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FD_FIELD_NUMBER: _ClassVar[int]
    STDERR_FD_FIELD_NUMBER: _ClassVar[int]
    STDIN_FD_FIELD_NUMBER: _ClassVar[int]
    TTY_FD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    has_tag: bool
    cg_type: str
    config: _process_pb2.ProcessConfig
    stdout_fd: int
    stderr_fd: int
    stdin_fd: int
    tty_fd: int
    timeout_ms: int
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ..., has_tag: _Optional[bool] = ..., cg_type: _Optional[str] = ..., config: _Optional[_Union[_process_pb2.ProcessConfig, _Mapping]] = ..., stdout_fd: _Optional[int] = ..., stderr_fd: _Optional[int] = ..., stdin_fd: _Optional[int] = ..., tty_fd: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class HandoverExit(_message.Message):
    __slots__ = ("pid", "tag", "has_tag", "end", "remaining_ms")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    HAS_TAG_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    has_tag: bool
    end: _process_pb2.ProcessEvent.EndEvent
    remaining_ms: int
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ..., has_tag: _Optional[bool] = ..., end: _Optional[_Union[_process_pb2.ProcessEvent.EndEvent, _Mapping]] = ..., remaining_ms: _Optional[int] = ...) -> None: ...

class HandoverWatcher(_message.Message):
    __slots__ = ("id", "path", "recursive", "include_entry_info", "pending_events")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENTRY_INFO_FIELD_NUMBER: _ClassVar[int]
    PENDING_EVENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    recursive: bool
    include_entry_info: bool
    pending_events: _containers.RepeatedCompositeFieldContainer[_filesystem_pb2.FilesystemEvent]
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., recursive: _Optional[bool] = ..., include_entry_info: _Optional[bool] = ..., pending_events: _Optional[_Iterable[_Union[_filesystem_pb2.FilesystemEvent, _Mapping]]] = ...) -> None: ...
