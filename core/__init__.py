"""bonserve's bottom layer: what `server/`, `training/` and `loadtests/` all need.

It imports nothing else of ours, so either side can depend on it without depending on the
other:

- `registry`    the checkpoint registry and its manifest (atomic entries, checksums)
- `desired_state` the fleet's promotions (alias -> entry, reward model) recorded atomically
                in the registry (_state/aliases.json); servers reconcile to it
- `lora`        the LoRA rules vLLM imposes: allowed ranks, the one servability check, and
                the one resolver of a LoRA entry's full-weight base
- `engine_args` vLLM engine keyword arguments (online `AsyncLLM` and offline `LLM`) built
                from plain values, with the defaults the server and the trainers share
- `chat`        the chat / reward-model token layout (what a reward model scores)
- `prompts`     prompt rows as a string or as messages, loaded and validated in one place
- `flags`       one config -> command-line flags builder (dataclasses and pydantic settings),
                with YAML recipes under flags
"""
