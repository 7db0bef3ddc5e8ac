"""`livekit.AgentDispatchService` on the Twirp API: dispatches made, deleted and listed by hand
(`server/agents.py` offers their jobs to workers); the node's dispatch records, and the token of
an assigned job's agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livekit.protocol import agent
from livekit.protocol import agent_dispatch as dispatch_proto

from sipbridge import ids
from sipbridge.errors import ApiError
from sipbridge.server.api.auth import Claims, sign_token
from sipbridge.server.api.twirp import TwirpServer

if TYPE_CHECKING:
    from sipbridge.server.agents import AgentService

SERVICE = "livekit.AgentDispatchService"
DISPATCH_PREFIX = "AD_"
JOB_TOKEN_TTL_S = 6 * 3600


class DispatchRecords:
    """A node's agent dispatches by room (`made`), and the ids of those waiting for a worker
    (`waiting_ids`). A room's default dispatch (its room names no agents) that finds no worker
    at once is kept as its room's name alone (`unmade`), its record made (id, message) when
    the records are next looked at (`by_room`, `waiting`): with a room per call and no worker
    for it, most rooms close with nobody having looked (issue 18: the record was 4.8% of a
    room's life in process)."""

    def __init__(self) -> None:
        self.made: dict[str, dict[str, dispatch_proto.AgentDispatch]] = {}
        self.waiting_ids: set[str] = set()
        self.unmade: dict[str, None] = {}  # rooms whose waiting default dispatch is not made

    def by_room(self) -> dict[str, dict[str, dispatch_proto.AgentDispatch]]:
        if self.unmade:
            self._make()
        return self.made

    def waiting(self) -> set[str]:
        if self.unmade:
            self._make()
        return self.waiting_ids

    def drop_room(self, room: str) -> dict[str, dispatch_proto.AgentDispatch]:
        """The room's records, no longer kept (none made for a default one not made yet)."""
        self.unmade.pop(room, None)
        return self.made.pop(room, {})

    def _make(self) -> None:
        for room in self.unmade:
            record = dispatch_proto.AgentDispatch(id=ids.new_id(DISPATCH_PREFIX), room=room)
            self.made.setdefault(room, {})[record.id] = record
            self.waiting_ids.add(record.id)
        self.unmade.clear()


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


def job_token(
    keys: dict[str, str], job: agent.Job, response: agent.AvailabilityResponse, identity: str
) -> str:
    """What an assigned job's agent joins its room with."""
    key, secret = next(iter(keys.items()))
    grants = ("roomJoin", "canPublish", "canSubscribe", "canPublishData", "canUpdateOwnMetadata")
    return sign_token(
        key,
        secret,
        ttl_s=JOB_TOKEN_TTL_S,
        sub=identity,
        name=response.participant_name,
        metadata=response.participant_metadata,
        attributes=dict(response.participant_attributes),
        kind="agent",
        video={**dict.fromkeys(grants, True), "room": job.room.name, "agent": True},
    )
