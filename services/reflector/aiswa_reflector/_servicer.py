from __future__ import annotations

import uuid

import grpc
from psycopg_pool import AsyncConnectionPool

from aiswa.projects.v1 import projects_pb2, projects_pb2_grpc
from aiswa.reflector.v1 import reflector_pb2, reflector_pb2_grpc
from aiswa_runtime import (
    Upstream,
    forwarded_metadata,
    invalid_argument,
    not_found,
    optional_user,
    upstream_error,
)


class ReflectorServicer(reflector_pb2_grpc.ReflectorServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, projects: Upstream) -> None:
        self._pool = pool
        self._projects = projects
        self._projects_stub = projects_pb2_grpc.ProjectsServiceStub(projects.channel)

    async def GetReport(self, request: reflector_pb2.GetReportRequest, context: grpc.aio.ServicerContext) -> reflector_pb2.Report:
        try:
            run_id = str(uuid.UUID(request.run_id))
        except ValueError:
            raise invalid_argument(f"run_id {request.run_id!r} is not a UUID") from None
        async with self._pool.connection() as conn:
            report = await (await conn.execute(
                "SELECT * FROM reports WHERE run_id = %s", (run_id,)
            )).fetchone()
            missing = not_found(
                f"no report for run {run_id}: the run does not exist or has not "
                "completed; check its state with `aiswa status RUN`"
            )
            if report is None:
                raise missing
            if optional_user(context) is not None:
                # The user may read the report only if projects lets them read
                # the project; a non-member gets the same NOT_FOUND.
                try:
                    await self._projects.call(
                        self._projects_stub.GetProject,
                        projects_pb2.GetProjectRequest(project_id=str(report["project_id"])),
                        idempotent=True, metadata=forwarded_metadata(context),
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        raise missing from None
                    raise upstream_error("projects", exc) from None
            files = await (await conn.execute(
                "SELECT * FROM files WHERE run_id = %s ORDER BY path", (run_id,)
            )).fetchall()
            functions = await (await conn.execute(
                "SELECT * FROM functions WHERE run_id = %s ORDER BY path, line_start", (run_id,)
            )).fetchall()
            duplicates = await (await conn.execute(
                "SELECT path_a, line_start_a, line_end_a, path_b, line_start_b, line_end_b,"
                " tokens FROM duplicates WHERE run_id = %s"
                " ORDER BY path_b, line_start_b, path_a, line_start_a", (run_id,)
            )).fetchall()
        by_path: dict[str, list[reflector_pb2.FunctionMetrics]] = {}
        for row in functions:
            by_path.setdefault(row["path"], []).append(reflector_pb2.FunctionMetrics(
                name=row["name"], qualified_name=row["qualified_name"], is_method=row["is_method"],
                line_start=row["line_start"], line_end=row["line_end"],
                cyclomatic_complexity=row["cyclomatic_complexity"],
                max_nesting=row["max_nesting"], length=row["length"],
            ))
        summary = report["summary"]
        message = reflector_pb2.Report(
            run_id=run_id, project_id=str(report["project_id"]), engine=report["engine"],
            summary=reflector_pb2.ReportSummary(**summary),
            files=[
                reflector_pb2.FileMetrics(
                    path=row["path"], loc=row["loc"], lloc=row["lloc"], sloc=row["sloc"],
                    comments=row["comments"], multi=row["multi"], blank=row["blank"],
                    single_comments=row["single_comments"],
                    maintainability_index=row["maintainability_index"],
                    halstead_volume=row["halstead_volume"], error=row["error"],
                    functions=by_path.get(row["path"], []),
                )
                for row in files
            ],
            duplicates=[reflector_pb2.Duplicate(**row) for row in duplicates],
        )
        message.completed_at.FromDatetime(report["completed_at"])
        return message
