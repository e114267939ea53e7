"""ResNet-20 (He et al. 2016) on CIFAR-10 with BN (or --config.norm.kind=group|layer|none).

Command (needs CIFAR-10 prepared through TFDS: `bn data prepare cifar10`, which
needs TensorFlow and network access once):

    bn train --config experiments/configs/resnet20_cifar.py --workdir runs/resnet20

Settings: SGD momentum 0.9 (Nesterov off), LR 0.1, weight decay 5e-4, batch 128,
flip + crop augmentation, cosine schedule, 64k steps (~164 epochs).
Expected: about 91-92% test accuracy with BN (He et al. report 91.25%). Far too
slow for a 2-core CPU (hours per 1k steps); use a GPU.
"""

from bn.config import base


def get_config():
  c = base()
  c.name = "resnet20_cifar"
  c.data.update(name="cifar10", train_eval_size=10000)
  c.model = c.model.__class__(dict(name="resnet20"))
  c.norm.update(kind="batch", momentum=0.9)
  c.optimizer.update(name="momentum", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup=1000)
  c.train.update(steps=64_000, batch_size=128, eval_every=2000, checkpoint_every=2000, augment=True, target_accuracy=0.9, eval_chunk=500)
  return c
