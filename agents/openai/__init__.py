"""The `openai` agent: any OpenAI-compatible chat-completions endpoint, streamed.

ollama, vLLM, the llama.cpp server, LM Studio and OpenAI itself all serve
`POST {base_url}/chat/completions` with `"stream": true` and answer with
server-sent events. Options (`latis-unit --agent openai -o KEY=VALUE`):

- `base_url` (required): the API root, e.g. `http://127.0.0.1:11434/v1`;
- `model` (required): the model's name on that server;
- `api_key_env`: the NAME of an environment variable that holds the API key.
  The key itself is never an option: it is read from the unit's environment
  at start, sent only in the `Authorization` header, and kept out of logs,
  state, error messages, reprs and the command line;
- `system`: a system prompt;
- `temperature`, `max_tokens`: sent to the server when given;
- `timeout`: seconds to wait for the connection and for each piece of the
  answer (default 120), not for the whole answer;
- `retries`: how many times a request that failed with 429, a 5xx or a
  connection error is tried again (default 0), with backoff or as long as
  `Retry-After` says (up to 60 s);
- `header.NAME=VALUE`: an extra HTTP header (not for secrets).

`session.create` may set `model`, `system`, `temperature` and `max_tokens`
for one session. A session keeps its conversation: each prompt sends the
system prompt, the earlier turns and the new one. See docs/agent-openai.md.

httpx is imported on first use, so `import latis_core` stays light.

The package: `agent` holds `OpenAIAgent`, its sessions and `OpenAIError`;
`sse` the server-sent events decoder the streamed answers go through.
"""

from latis_agents.openai.agent import OpenAIAgent as OpenAIAgent
from latis_agents.openai.agent import OpenAIError as OpenAIError

__all__ = ["OpenAIAgent", "OpenAIError"]
