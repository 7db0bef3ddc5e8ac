"""`livekit.AgentDispatchService` on the Twirp API: dispatches made, deleted and listed by hand
(`server/agents.py` offers their jobs to workers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livekit.protocol import agent_dispatch as dispatch_proto

from sipbridge.errors import ApiError
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import TwirpServer

if TYPE_CHECKING:
    from sipbridge.server.agents import AgentService

SERVICE = "livekit.AgentDispatchService"


def require_room_admin(req: Any, claims: Claims) -> None:
    if not claims.video_grant("roomAdmin"):
        raise ApiError("permission_denied", "requires the roomAdmin grant")
    if claims.room and req.room and claims.room != req.room:
        raise ApiError("permission_denied", f"token is not valid for room {req.room!r}")


class DispatchApi:
    def __init__(self, agents: AgentService) -> None:
        self.agents = agents

    def register(self, twirp: TwirpServer) -> None:
        for name, request_type, handler in (
            ("CreateDispatch", dispatch_proto.CreateAgentDispatchRequest, self.create_dispatch),
            ("DeleteDispatch", dispatch_proto.DeleteAgentDispatchRequest, self.delete_dispatch),
            ("ListDispatch", dispatch_proto.ListAgentDispatchRequest, self.list_dispatch),
        ):
            twirp.register(SERVICE, name, request_type, handler, require_room_admin)

    async def create_dispatch(
        self, req: dispatch_proto.CreateAgentDispatchRequest, _: Claims
    ) -> dispatch_proto.AgentDispatch:
        if not req.room:
            raise ApiError("invalid_argument", "room is required")
        try:
            # As LiveKit does, a dispatch to a room that does not exist yet creates it.
            self.agents.rooms.create(req.room, self.agents.runtime.now())
            return self.agents.add_dispatch(req.room, req.agent_name, req.metadata)
        finally:
            self.agents.runtime.commit()

    async def delete_dispatch(
        self, req: dispatch_proto.DeleteAgentDispatchRequest, _: Claims
    ) -> dispatch_proto.AgentDispatch:
        record = self.agents.dispatches.get(req.room, {}).pop(req.dispatch_id, None)
        if record is None:
            raise ApiError("not_found", f"dispatch {req.dispatch_id!r} not found")
        self.agents.rounds.pop(record.id, None)
        self.agents.waiting.discard(record.id)
        for job_id, running in list(self.agents.jobs.items()):
            if running.job.dispatch_id == record.id:
                self.agents.terminate(job_id)
        return record

    async def list_dispatch(
        self, req: dispatch_proto.ListAgentDispatchRequest, _: Claims
    ) -> dispatch_proto.ListAgentDispatchResponse:
        found = list(self.agents.dispatches.get(req.room, {}).values())
        if req.dispatch_id:
            found = [d for d in found if d.id == req.dispatch_id]
        return dispatch_proto.ListAgentDispatchResponse(agent_dispatches=found)
