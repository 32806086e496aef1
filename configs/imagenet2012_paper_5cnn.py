"""The paper's "5 CNNs": five AlexNets by the paper's recipe, trained together, their softmax averaged.

  python main.py --config=configs/imagenet2012_paper_5cnn.py --workdir=runs/alexnet2012_5cnn \\
      --config.dataset.data_dir=/data/tfds

Expected: the paper's 38.1% top-1 / 16.4% top-5 validation error for the five (40.7% / 18.2% for
one); not yet measured with this config. The members (seeds 0 to 4) differ in their
initialisation, dropout masks and crops; streamed, they see the same images in the same order (the
paper's five were separate runs). The plateau rule divides every member's rate when the
ensemble's validation error stops improving. Evaluation reports the ensemble and each member;
--mode=evaluate and --mode=predict take --member=k for one. Five times the paper config's
parameters, optimizer state and compute per step: docs/research.md. Cost: 304.8 M parameters, 2.1
GiB per checkpoint; on a 2-core CPU (AMD EPYC, BENCHMARKS.md, "ImageNet's shape, rehearsed on a
CPU") 17.2 GiB of memory; not yet measured on a GPU.
"""

from configs import imagenet2012_paper


def get_config():
    config = imagenet2012_paper.get_config()
    config.ensemble_size = 5
    return config
