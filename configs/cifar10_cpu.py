"""A slim alexnet_cifar for CIFAR-10 on a CPU.

  python main.py --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu

Expected: 82.18% validation accuracy (train[90%:]) after 18 epochs, 25.0 min on a 2-core CPU
(BENCHMARKS.md, "CIFAR-10 on a 2-core CPU", which has the offline command it was measured with).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.dtype = "float32"  # CPUs have no fast bfloat16 convolutions
    config.model.channels = (32, 64, 128, 128, 128)
    config.model.fc_features = 512
    config.model.norm = "none"
    config.model.dropout_rate = 0.5
    config.optimizer.label_smoothing = 0.1
    config.eval_flip = False
    config.num_epochs = 18
    config.batch_size = 256
    config.optimizer.learning_rate = 0.05
    config.log_every_steps = 25
    config.checkpoint_every_steps = 500
    return config
