"""Training side of bonserve: data, verifiable tasks, trainers writing registry entries.

The library (importable, no command line):

    train_config.py  TrainConfig, the options every trainer shares; <name>_config.py: one
                     config per command (sft, rm, dpo, ppo, online_rl, grpo, rloo, prefs,
                     sft_data, eval), each a dataclass whose fields are also its flags
    common.py        start model from the registry, run directory, TRL's loop, save_entry
    sft.py rm.py dpo.py            TRL's SFT / reward / DPO trainers: run(config)
    online_rl.py grpo.py rloo.py   TRL's online RL (shared prompts, rewards, entry): run(config)
    ppo.py ppo_rollouts.py ppo_math.py
                     in-house RLHF-PPO: the trainer; rollouts (vLLM / HF, padding,
                     packing); the pure tensor math
    data.py          TRL data formats: read, validate (messages_of for prompt rows), hash
    prompts.py       prompts from a task split or a prompt file (also loadtests')
    tasks/           verifiable tasks and their gold verifiers
    reward_fns.py    gold / reward-model rewards for online RL; reward.py: reward models
    prefs.py         sample k, judge, keep best vs worst pairs; sft_data.py: pairs -> SFT rows
    eval.py          held-out accuracy, pass@n, BoN-n, KL to base
    generation.py    offline vLLM sampling and scoring; base_model.py: the default model;
                     merge.py: LoRA entry -> full weights

The entry points, thin scripts over the library: training/scripts/ (`bonserve train|data|eval`
registers the same parsers; `python -m training.scripts.NAME` runs one directly).
"""
