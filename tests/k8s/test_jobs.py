"""Training Jobs (k8s/jobs/<stage>): each runs a real `bonserve` command line, the stages agree
on the names of one run (k8s/jobs/params/run.yaml), and they write the server's registry."""

from __future__ import annotations

import yaml

from tests.k8s.manifests import (
    JOB_STAGES,
    ROOT,
    Rendered,
    bonserve_argv,
    deployment_spec,
    job_container,
    literal_env,
    one,
    parse_or_fail,
    server_container,
)

RUN = yaml.safe_load((ROOT / "k8s" / "jobs" / "params" / "run.yaml").read_text())["data"]
# stage -> (the bonserve subcommand, the Job name made from run.yaml)
EXPECTED = {
    "prefs": (["data", "prefs"], f"bonserve-data-{RUN['prefs']}"),
    "rm": (["train", "rm"], f"bonserve-train-{RUN['rm']}"),
    "dpo": (["train", "dpo"], f"bonserve-train-{RUN['dpo']}"),
    "ppo": (["train", "ppo"], f"bonserve-train-{RUN['ppo']}"),
}


def args_of(rendered: Rendered, stage: str) -> object:
    argv = bonserve_argv(job_container(rendered[f"jobs-{stage}"]))
    assert argv[1:3] == EXPECTED[stage][0], stage
    # The console script, not `python -m training...`: module paths move, the command stays.
    assert argv[0] == "bonserve"
    return parse_or_fail(argv)


def test_every_stage_has_a_job() -> None:
    dirs = {p.parent.name for p in (ROOT / "k8s" / "jobs").glob("*/kustomization.yaml")} - {"params"}
    assert dirs == set(JOB_STAGES) == set(EXPECTED)


def test_job_names_and_env_carry_the_run_parameters(rendered: Rendered) -> None:
    for stage in JOB_STAGES:
        job = one(rendered[f"jobs-{stage}"], "Job")
        assert job["metadata"]["name"] == EXPECTED[stage][1], stage
        env = literal_env(job_container(rendered[f"jobs-{stage}"]))
        assert {k: env[f"RUN_{k.upper()}"] for k in RUN} == RUN, stage


def test_stages_chain_on_one_run(rendered: Rendered) -> None:
    prefs, rm, dpo, ppo = (args_of(rendered, stage) for stage in JOB_STAGES)
    pairs = f"/data/datasets/{RUN['prefs']}.jsonl"
    assert str(prefs.out) == str(rm.data) == str(dpo.data) == pairs
    assert prefs.policy == rm.base == dpo.base == ppo.base == RUN["base"]
    assert (rm.name, dpo.name, ppo.name) == (RUN["rm"], RUN["dpo"], RUN["ppo"])
    # PPO optimises the reward model this run trained.
    assert ppo.reward == "rm" and ppo.reward_model == RUN["rm"]
    assert len({RUN["rm"], RUN["dpo"], RUN["ppo"]}) == 3, "each stage writes its own entry"


def test_runs_start_from_what_the_server_serves(rendered: Rendered) -> None:
    assert RUN["base"] == literal_env(server_container(rendered["cpu"]))["BONSERVE_MODEL"]


def test_training_jobs_write_the_servers_registry(rendered: Rendered) -> None:
    deployment = deployment_spec(rendered["cpu"])
    server_claims = {
        v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"] if "persistentVolumeClaim" in v
    }
    assert server_claims == {one(rendered["cpu"], "PersistentVolumeClaim")["metadata"]["name"]}
    for stage in JOB_STAGES:
        spec = one(rendered[f"jobs-{stage}"], "Job")["spec"]["template"]["spec"]
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        }
        assert claims == server_claims, stage
        (train,) = spec["containers"]
        (mount,) = [m for m in train["volumeMounts"] if m["mountPath"] == "/data"]
        assert not mount.get("readOnly"), stage
        assert literal_env(train)["BONSERVE_HOME"] == "/data"
        assert spec["restartPolicy"] == "Never"
