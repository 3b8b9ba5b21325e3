"""The parent's engine client: everything between the public facade (`LlamaParent`) and the worker process.

- `prompts.PromptFlow`: a prompt's way from send to its completion event;
- `queue.PromptQueue`: which prompt starts next (FIFO, one running per conversation);
- `conversations.Conversations`: the histories and the turns of prompts;
- `completions.CompletionLedger`: one event per prompt, and the fan-out of tokens;
- `worker_link.WorkerLink`: the worker's requests, death and liveness;
- `restarts.CrashRestarts`: a crashed worker's restarts by a `RestartPolicy` (attempts, backoff, giving up);
- `process.WorkerProcess`: the process and its socket;
- `scope_state`: a conversation's saved state.
"""
