from __future__ import annotations

import asyncio

import grpc


class ServiceError(Exception):
    """An error a handler returns to its caller with a gRPC status code.

    The message is sent to the client, so it names the value that was wrong and
    what to do, and never contains a secret.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def permission_denied(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message)


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message)


def failed_precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def cancelled_from_outside() -> bool:
    """Return whether the running task is being cancelled, rather than failed by a closed connection.

    aiormq fails every pending write of a connection with the reason of its
    close, and a robust connection's ``reconnect()`` (which a login switch
    calls) closes with ``CancelledError``. An ack or a publish waiting for its
    write then raises ``CancelledError`` in a task that no caller cancelled.
    Only a real ``Task.cancel()`` raises the count that this reads.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
