import torch

from compressor.pipeline.train import TrainConfig, evaluate_top1, make_optimizer, train, train_steps
from compressor.zoo import models


def test_a_few_training_steps_lower_the_loss_on_real_data(fmnist):
    torch.manual_seed(0)
    model = models.build_model("resnet18", 10)
    config = TrainConfig(max_lr=0.05, augment=False, label_smoothing=0.0)
    optimizer = make_optimizer(model, config)
    batch = next(fmnist.train.batches(64, shuffle=True, seed=0))
    def loss() -> float:
        # Batch statistics (train mode): running BN stats are meaningless after 8 steps.
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model.train()(batch[0]), batch[1]).item()

    before = loss()
    train_steps(model, [batch] * 16, optimizer, None, config, torch.device("cpu"))
    after = loss()
    assert after < before * 0.7


def test_train_records_history_and_resumes_from_its_epoch_checkpoint(fmnist, tmp_path):
    small = fmnist.train.subset(256)
    test = fmnist.test.subset(200)
    config = TrainConfig(epochs=2, batch_size=64, max_lr=0.05)
    torch.manual_seed(0)
    model = models.build_model("mobilenet_v2", 10)
    result = train(model, small, test, config, torch.device("cpu"),
                   resume_path=tmp_path / "partial.pt", progress=False)
    assert [r.epoch for r in result.history] == [1, 2]
    assert all(r.test_top1 is not None for r in result.history)
    # A finished state on disk is picked up instead of training again.
    resumed = train(models.build_model("mobilenet_v2", 10), small, test, config,
                    torch.device("cpu"), resume_path=tmp_path / "partial.pt", progress=False)
    assert [r.test_top1 for r in resumed.history] == [r.test_top1 for r in result.history]


def test_evaluate_top1_counts_correct_predictions():
    class Constant(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 3] = 1
            return out

    batches = [(torch.zeros(4, 3, 8, 8), torch.tensor([3, 3, 1, 2]))]
    assert evaluate_top1(Constant(), batches, torch.device("cpu"), channels_last=False) == 50.0
