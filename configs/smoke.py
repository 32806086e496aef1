"""Smoke run: a tiny alexnet_cifar on built-in synthetic 32x32 data. No download, no GPU.

  python main.py --config=configs/smoke.py --workdir=/tmp/smoke

Expected: 100% validation accuracy (each synthetic class is a colour) in 26 s on a 2-core CPU;
run again, it only reports the finished run (BENCHMARKS.md, "The smoke run").
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset.name = "synthetic"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.input.workers = 0  # decode in the training process (what the small runs of the tests expect)
    config.model.dtype = "float32"
    config.model.width = 0.25
    config.model.fc_features = 512
    config.model.norm = "none"
    config.optimizer.label_smoothing = 0.1
    config.eval_flip = False
    config.optimizer.learning_rate = 0.005
    config.num_epochs = 2
    config.batch_size = 128
    config.eval_batch_size = 256
    config.log_every_steps = 4
    config.checkpoint_every_steps = 8
    return config
