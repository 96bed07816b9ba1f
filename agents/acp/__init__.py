"""The `acp` agent: any agent that speaks the Agent Client Protocol over stdio.

    latis-unit --stdio --agent acp -- gemini --acp
    latis-unit --stdio --agent acp -o cwd=/srv/project -- claude-agent-acp

The unit starts the agent's command (at the first session), says `initialize`
(client capabilities: text files read and written, terminals), then maps
latis onto ACP (docs/agent-acp.md has the whole table):

- `session.create` -> `session/new` (cwd: the unit's working directory, or
  the `cwd` session option, which must lie inside it);
- `session.resume` -> `session/load`, when the agent announced `loadSession`;
- `prompt.send` -> `session/prompt`; its `session/update` notifications become
  chunks (text for `agent_message_chunk`, typed chunks for the rest: nothing
  is dropped), and its stop reason a last chunk of kind `stop`;
- a cancelled prompt -> `session/cancel`, then a bounded wait for the agent's
  answer (stop reason `cancelled`);
- the agent's `session/request_permission` -> an `input.request` of kind
  `permission`; the answer, an option's id or name (or yes/no), picks the
  option; any other answer is taken as no (the first reject option, else the
  outcome `cancelled`);
- the agent's `elicitation/create` (a structured question, form mode; unstable
  in ACP) -> an `input.request` of kind `form` whose `data.schema` is the
  requested JSON schema; the answer (JSON content, or one property's value,
  or decline/cancel) becomes the response;
- `usage_update` session updates -> chunks of kind `usage` (context used and
  size, the session's cost so far: `cumulative`).

The unit answers the agent's `fs/read_text_file`, `fs/write_text_file` and
`terminal/*` requests itself, inside the session's working directory: every
path goes through `resolve_inside` and is refused with a JSON-RPC error if it
leads out.

ACP is newline-delimited JSON-RPC 2.0; the SDK is asyncio-only, so this module
speaks it natively from trio. One agent process serves every session of the
unit. Its stderr is always read (the last lines name a crash). It runs in a
process group of its own, owned by a trio system task: leaving the unit (the
end of `trio.run`), or `AcpAgent.aclose`, ends it: EOF on its stdin, then
SIGTERM, then SIGKILL, to the whole group.

Options (`latis-unit --agent acp -o KEY=VALUE ... -- COMMAND ...`):

- `cwd`: the working directory: the agent runs there and its files and
  terminals are confined to it (default: the unit's own);
- `fs`: `rw` (default), `ro` or `off`: which file requests are served;
- `terminal`: `on` (default) or `off`;
- `auth`: an authentication method id to `authenticate` with after `initialize`;
- `sessions`: a JSON file that keeps which agent session each latis session
  is, so that `session.resume` can load it after the unit restarts;
- `timeout`: seconds the agent gets to answer `initialize`, `session/new` and
  `session/load` (default 120);
- `cancel_timeout`: seconds a cancelled prompt waits for the agent to stop
  (default 3);
- `grace`: seconds the agent gets to exit after EOF, and again after SIGTERM
  (default 1).

The package, one concern a module:

- `errors`: `AcpError`, `AgentExited`, and the JSON-RPC errors and codes the
  client answers with;
- `jsonrpc`: the agent process and the newline-delimited JSON-RPC over its
  stdin and stdout (requests, responses, notifications, its end);
- `events`: the queue that carries a running prompt's updates and questions;
- `handlers`: the client-side methods the agent calls (`fs/*`, `terminal/*`);
- `terminal`: one command run for the agent (`terminal/create`);
- `permissions`: a human's answer to `session/request_permission`;
- `elicitation`: a human's answer to `elicitation/create`;
- `agent`: `AcpAgent` and its sessions.
"""

from latis_agents.acp.agent import AcpAgent as AcpAgent
from latis_agents.acp.errors import AcpError as AcpError
from latis_agents.acp.errors import AgentExited as AgentExited

__all__ = ["AcpAgent", "AcpError", "AgentExited"]
