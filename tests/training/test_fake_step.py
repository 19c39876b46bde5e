"""The whole paper-preset training step runs under ``FakeTensorMode``, so it reads no tensor value on the host: on a GPU
it queues without a device-to-host synchronisation (issue 25). The step is the loop's own ``train_generator_step`` of
the adversarial stage at an R1 step with LPIPS: generator forward with the fused renderer, super-resolution, the
frozen discriminator, losses, backward, Adam; then the discriminator on real and fake images, R1's double backward
(through bias_act and upfirdn2d), backward, Adam (``export3d.profiling.memory``, which ``profile --memory`` runs)."""

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from export3d.profiling.memory import PHASES, R1_ROW, MemoryOptions, fake_device, training_step_memory


def test_a_host_read_fails_under_fake_tensors():
    """What makes the step's test meaningful: any data-dependent read raises under the fake mode."""
    with FakeTensorMode():
        loss = torch.randn(4).square().mean()
        with pytest.raises(DataDependentOutputException):
            loss.item()
        with pytest.raises(DataDependentOutputException):
            bool(torch.isfinite(loss).all())


def test_paper_training_step_with_r1_runs_under_fake_tensors():
    report = training_step_memory(MemoryOptions(preset="paper", batch=1))
    assert report.device == fake_device()
    assert report.kernel_impl == ("triton" if report.device == "cpu" else "auto")  # the ops' GPU path
    assert report.logged == ("mse_raw", "mse", "lpips_random_vgg_raw", "lpips_random_vgg", "g_adv", "loss", "r1",
                             "d_loss")  # fmt: skip
    assert report.optimiser_steps == ("generator", "discriminator")
    ops = report.ops
    # the fused renderer, the generator's ops, the super-resolution's and discriminator's EG3D ops, forward and
    # backward; bias_act_bwd more often than its forward: R1's double backward runs it again (lrelu: act'' = 0, so
    # bias_act_bwd2 never runs)
    for op in ("render_rays_weights", "render_rays_fwd", "render_rays_bwd", "eadaln_fwd", "eadaln_bwd",
               "pixel_shuffle_lowpass_fwd", "pixel_shuffle_lowpass_bwd", "upfirdn2d_fwd", "bias_act_fwd",
               "bias_act_bwd"):  # fmt: skip
        assert ops[op] > 0, (op, ops)
    assert ops["bias_act_bwd"] > ops["bias_act_fwd"] and "bias_act_bwd2" not in ops
    assert "triplane_sample_fwd" not in ops and "composite_rays_fwd" not in ops  # the split path did not run
    # memory lands where the modules run: SR and the frozen D in the generator step, D and R1 in the other
    assert report.module_total("model.superres") > 0 and report.rows[R1_ROW].get(PHASES[1], 0) > 0
    assert all(PHASES[1] not in row for name, row in report.rows.items() if name.startswith(("model.", "lpips")))
    assert report.total(PHASES[0]) > report.superres_and_discriminator() // 2 > 0
