from click.testing import CliRunner

from resdyn.cli.main import main


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    names = main.list_commands(None)
    assert "demo" in names
    for name in names:
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage:" in res.output


def test_demo_prints_accuracy_and_gap():
    res = CliRunner().invoke(main, ["demo", "-S", "256", "--steps", "30", "--test-size", "200",
                                    "--dtype", "float64"])
    assert res.exit_code == 0, res.output
    assert "discrete ResNet" in res.output and "continuous ResNet" in res.output
    assert res.output.count("gap") >= 2


def test_cuda_without_a_gpu_is_a_clear_usage_error():
    import torch

    if torch.cuda.is_available():
        return
    res = CliRunner().invoke(main, ["demo", "--device", "cuda"])
    assert res.exit_code == 2
    assert "no CUDA GPU is available" in res.output
