"""``/v1/runs``: runs, their steps, tool calls and checkpoints — thin over the Store."""

from __future__ import annotations

from aiohttp import web

from bot.api.routes_base import (
    ItemsOf,
    Route,
    api,
    body,
    caller,
    finish,
    path,
    query,
    respond,
)
from bot.api.schemas import (
    CheckpointCreate,
    Items,
    RunPut,
    RunQuery,
    StepPut,
    ToolCallCreate,
    ToolCallResult,
)
from storage.records import (
    Checkpoint,
    NewCheckpoint,
    NewToolCall,
    Run,
    RunUpsert,
    Step,
    StepUpsert,
    ToolCall,
)

RUNS = ItemsOf(Run)
STEPS = ItemsOf(Step)
TOOL_CALLS = ItemsOf(ToolCall)
CHECKPOINTS = ItemsOf(Checkpoint)


async def put_run(request: web.Request) -> web.Response:
    """Create or update a run (always 200; ``policy_ref`` is kept from the insert).

    Budgets not given come from the run's policy, else from the defaults.
    """
    run_id = path(request, "id")
    spec: RunPut = await body(request, RunPut)
    RunUpsert(id=run_id)  # the id's own limits, before anything is written
    who = caller(request)
    run = await api(request).governance.upsert_run(run_id, spec.model_dump(), who.admin,
                                                   who.uid)
    return respond(run)


async def get_run(request: web.Request) -> web.Response:
    store = api(request).store
    return respond(await store.run(store.get_run, path(request, "id")))


async def list_runs(request: web.Request) -> web.Response:
    q: RunQuery = query(request, RunQuery)
    store = api(request).store
    return RUNS.respond(await store.run(store.list_runs, q.status, q.limit))


async def cancel_run(request: web.Request) -> web.Response:
    """Halt the run (reason ``cancelled``) and withdraw its pending approvals."""
    run_id = path(request, "id")
    who = caller(request)
    return respond(await finish(api(request).governance.cancel_run(run_id, "api", who.admin,
                                                                   who.uid)))


async def put_step(request: web.Request) -> web.Response:
    run_id, index = path(request, "id"), path(request, "index")
    spec: StepPut = await body(request, StepPut)
    step = StepUpsert(run_id=run_id, index=index, **spec.model_dump())
    return respond(await finish(api(request).governance.upsert_step(step)))


async def list_steps(request: web.Request) -> web.Response:
    store = api(request).store
    return STEPS.respond(await store.run(store.list_steps, path(request, "id")))


async def create_tool_call(request: web.Request) -> web.Response:
    """Record a tool call under the run's policy: 403 outside its allowlist; an
    approval (to wait on like any other) when one of its rules matches."""
    run_id = path(request, "id")
    spec: ToolCallCreate = await body(request, ToolCallCreate)
    call, approval = await finish(api(request).governance.append_tool_call(
        NewToolCall(run_id=run_id, **spec.model_dump())))
    return respond(ToolCallResult(tool_call=call, approval=approval), 201)


async def list_tool_calls(request: web.Request) -> web.Response:
    store = api(request).store
    return TOOL_CALLS.respond(await store.run(store.list_tool_calls, path(request, "id")))


async def create_checkpoint(request: web.Request) -> web.Response:
    run_id = path(request, "id")
    spec: CheckpointCreate = await body(request, CheckpointCreate, optional=True)
    store = api(request).store
    checkpoint = await store.run(store.save_checkpoint,
                                 NewCheckpoint(run_id=run_id, **spec.model_dump()))
    return respond(checkpoint, 201)


async def list_checkpoints(request: web.Request) -> web.Response:
    store = api(request).store
    return CHECKPOINTS.respond(await store.run(store.list_checkpoints, path(request, "id")))


async def latest_checkpoint(request: web.Request) -> web.Response:
    store = api(request).store
    return respond(await store.run(store.latest_checkpoint, path(request, "id")))


_RUN = "/v1/runs/{id}"
ROUTES = [
    Route("PUT", _RUN, put_run, "Create or update a run", "runs", response=Run, body=RunPut,
          errors=(403,),
          description="Always 200. Writes name, budgets and metadata (a full replacement); "
                      "policy_ref only when the run is created. An agent uid may create runs "
                      "with budgets no looser than the policy's or the defaults, and update "
                      "a run's name and metadata; changing an existing run's budgets or "
                      "policy needs an admin uid (403)."),
    Route("GET", _RUN, get_run, "Read a run with its usage", "runs", response=Run,
          errors=(404,)),
    Route("GET", "/v1/runs", list_runs, "List runs, newest first", "runs",
          response=Items[Run], query=RunQuery),
    Route("POST", f"{_RUN}/cancel", cancel_run, "Cancel a run", "runs", response=Run,
          errors=(403, 404, 409),
          description="Halts the run with reason cancelled and withdraws its pending "
                      "approvals; 409 if it is not running. An agent uid may cancel only the "
                      "runs it created (403)."),
    Route("PUT", f"{_RUN}/steps/{{index}}", put_step, "Record a step (one loop)", "runs",
          response=Step, body=StepPut, errors=(402, 404),
          description="A new index counts one loop; 402 when the run is halted."),
    Route("GET", f"{_RUN}/steps", list_steps, "List a run's steps", "runs",
          response=Items[Step], errors=(404,)),
    Route("POST", f"{_RUN}/tool-calls", create_tool_call, "Record a tool call", "runs",
          status=201, response=ToolCallResult, body=ToolCallCreate, errors=(402, 403, 404, 409),
          description="approval is the request the run's policy needs for this call, or null."),
    Route("GET", f"{_RUN}/tool-calls", list_tool_calls, "List a run's tool calls", "runs",
          response=Items[ToolCall], errors=(404,)),
    Route("POST", f"{_RUN}/checkpoints", create_checkpoint, "Save a checkpoint", "runs",
          status=201, response=Checkpoint, body=CheckpointCreate, body_required=False,
          errors=(404,)),
    Route("GET", f"{_RUN}/checkpoints", list_checkpoints, "List a run's checkpoints", "runs",
          response=Items[Checkpoint], errors=(404,)),
    Route("GET", f"{_RUN}/checkpoints/latest", latest_checkpoint, "The latest checkpoint",
          "runs", response=Checkpoint, errors=(404,)),
]
