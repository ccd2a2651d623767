"""Per-call state: pipelines sharing components (`from_pipe`) give the same images from two threads at once."""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch

from pipelines import HeadHunterPipeline

CALL = dict(num_inference_steps=6, height=32, width=32, output_type="np")


def _run_together(jobs):
    """Run the callables at the same moment in threads; their results in order (errors re-raised)."""
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def work(i, job):
        try:
            start.wait()
            results[i] = job()
        except Exception as error:  # noqa: BLE001 - re-raised below in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _twins(tiny_folder, name):
    pipe = HeadHunterPipeline.from_pretrained(tiny_folder(name))
    pipe.set_progress_bar_config(disable=True)
    twin = HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
    twin.set_progress_bar_config(disable=True)
    denoiser = pipe.unet if name.startswith("sd1") else pipe.transformer
    assert (twin.unet if name.startswith("sd1") else twin.transformer) is denoiser
    return pipe, twin, denoiser


def _calls(pipe, twin, kinds):
    def make(target, seed, extra):
        return lambda: (
            target("a red circle", generator=torch.Generator().manual_seed(seed), **CALL, **extra).images
        )

    return [
        make(target, seed, extra) for (target, seed, extra) in zip((pipe, twin), (0, 1), kinds, strict=True)
    ]


def test_two_threads_on_shared_transformer_equal_one_after_the_other(tiny_folder):
    pipe, twin, transformer = _twins(tiny_folder, "sd3")
    before = dict(transformer.attn_processors)
    jobs = _calls(pipe, twin, (dict(pag_heads="L1H0,L2H1"), dict(pag_heads="L0H1", pag_identity="image")))
    alone = [job() for job in jobs]
    together = _run_together(jobs)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0], alone[1])
    assert all(transformer.attn_processors[k] is v for k, v in before.items())
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks


def test_two_threads_structured_and_heads_on_one_unet(tiny_folder):
    """One thread runs structured cross-attention, the other SoftPAG heads and a plain call, on one UNet."""
    pipe, twin, unet = _twins(tiny_folder, "sd15")
    before = dict(unet.attn_processors)
    jobs = _calls(
        pipe, twin, (dict(structured="key-value", noun_phrases=["a red circle"]), dict(pag_heads="L1H0"))
    )
    jobs.append(lambda: twin("a blue square", generator=torch.Generator().manual_seed(2), **CALL).images)
    alone = [job() for job in jobs]
    # The plain call shares the twin's scheduler with the heads call: give it its own pipeline for the race.
    third = HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))
    third.set_progress_bar_config(disable=True)
    jobs[2] = lambda: third("a blue square", generator=torch.Generator().manual_seed(2), **CALL).images
    together = _run_together(jobs)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(unet.attn_processors[k] is v for k, v in before.items())


# Every mix of guided and plain calls, 4 threads: own schedulers -> each call its own image; one shared
# scheduler -> each call its own image or a clear refusal before any work, never a corrupted image or a crash.
MIXES = {
    "guided+plain": ("L2H1", None, "L0H1", None),
    "all guided": ("L2H1", "L0H1", "L1H0,L2H1", "L2H0"),
    "all plain": (None, None, None, None),
}


def _job(target, heads, seed):
    extra = {} if heads is None else {"pag_heads": heads}
    return lambda: (
        target("a red circle", generator=torch.Generator().manual_seed(seed), **CALL, **extra).images
    )


def _outcomes(jobs):
    """Run the jobs at the same moment; each result is an array or the GuidanceError it raised."""
    from guidance.config import GuidanceError

    def caught(job):
        def run():
            try:
                return job()
            except GuidanceError as error:
                return error

        return run

    return _run_together([caught(job) for job in jobs])


def test_four_threads_with_own_schedulers_every_mix_equal_one_after_the_other(tiny_folder):
    pipe, _, transformer = _twins(tiny_folder, "sd3")
    pipes = [pipe] + [
        HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler)) for _ in range(3)
    ]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    before = dict(transformer.attn_processors)
    for mix, heads in MIXES.items():
        jobs = [_job(p, h, seed) for seed, (p, h) in enumerate(zip(pipes, heads, strict=True))]
        alone = [job() for job in jobs]
        for a, b in zip(alone, _run_together(jobs), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=mix)
    assert all(transformer.attn_processors[k] is v for k, v in before.items())
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks


def test_four_threads_on_one_shared_pipeline_get_their_image_or_a_clear_refusal(tiny_folder):
    """Before the scheduler was held per call, a guided and a plain call on one pipeline both failed with
    `IndexError: index 5 is out of bounds` from the shared scheduler (issue 27)."""
    from guidance.config import GuidanceError

    pipe, _, transformer = _twins(tiny_folder, "sd3")
    before = dict(transformer.attn_processors)
    for mix, heads in MIXES.items():
        jobs = [_job(pipe, h, seed) for seed, h in enumerate(heads)]
        alone = [job() for job in jobs]
        outcomes = _outcomes(jobs)
        made = [i for i, o in enumerate(outcomes) if not isinstance(o, GuidanceError)]
        assert made, f"{mix}: every call was refused"
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, GuidanceError):
                assert "scheduler is in use by a call running in another thread" in str(outcome)
                assert "from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler))" in str(outcome)
            else:
                np.testing.assert_array_equal(outcome, alone[i], err_msg=f"{mix}, call {i}")
        np.testing.assert_array_equal(jobs[0](), alone[0])  # the pipeline is whole afterwards
    assert all(transformer.attn_processors[k] is v for k, v in before.items())
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks
