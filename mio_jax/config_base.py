"""Every configuration key of mio_jax, with its default.

Dataset configs in `configs/` start from `base_config()` and override what
their recipe changes, so the full schema lives in one place and an
unknown key (a typo in `--config.key=value`) is an error, not a new key.
"""
import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # What `main` does: pretrain | all | linear_eval (augmented linear
  # evaluation) | finetune | feature_probe_eval | knn_eval | fewshot_eval.
  c.mode = "all"
  c.seed = 0

  # ---- data -------------------------------------------------------------
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"  # digits | cifar10 | cifar100 | stl10 | tiny_imagenet | imagenet100 | imagenet1k | image_folder
  # TFDS data_dir (may be gs://); None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.dataset.data_dir = config_dict.placeholder(str)
  # Where TFDS finds archives it cannot download (tiny_imagenet, imagenet*).
  c.dataset.manual_dir = config_dict.placeholder(str)
  c.dataset.image_size = 32  # side of the square crops fed to the network
  # TFDS split expression pretraining reads (e.g. "train[:80%]", "train");
  # None: the data set's default (STL-10: train+unlabelled).
  c.dataset.pretrain_split = config_dict.placeholder(str)
  # TFDS split expressions the frozen-encoder evaluation fits its probes on
  # ("train") and scores them on ("test"); None: the data set's. The loss
  # comparison's selection sets them to hold a validation split out.
  c.dataset.eval_train_split = config_dict.placeholder(str)
  c.dataset.eval_test_split = config_dict.placeholder(str)
  # image_folder only: DIR holding train/<class>/<image> (and optionally
  # test/<class>/<image>); prepared into data_dir on first use.
  c.dataset.path = config_dict.placeholder(str)
  # image_folder without DIR/test: share of each class held out as the test
  # split (stratified, the same on every run).
  c.dataset.test_fraction = 0.1
  c.dataset.prefetch = 2  # batches prefetched to the devices

  # ---- two-view augmentation (host side, tf.data, stateless) --------------
  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale = (0.08, 1.0)  # random resized crop area range
  c.augment.crop_ratio = (3 / 4, 4 / 3)
  c.augment.hflip = True
  c.augment.color_jitter_strength = 0.5  # s: brightness/contrast/saturation 0.8s, hue 0.2s
  c.augment.color_jitter_prob = 0.8
  c.augment.color_jitter_random_order = True  # the four jitter ops in random order (torchvision)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = 0.0  # 0.5 for images of 64 px and more
  c.augment.solarize_prob = 0.0  # 0.2 for images of 64 px and more
  # Small-image extras (0 disables), used by the digits demo.
  c.augment.rotation_degrees = 0.0
  c.augment.translate_pixels = 0
  c.augment.gaussian_noise_std = 0.0
  # Colour jitter, grayscale, blur, solarise and noise in the train step on
  # the accelerator (mio_jax.data.device_augment, keyed by seed, step,
  # example, view) instead of on the host, which then only decodes, crops
  # and flips: several times more images per host core at 224 px.
  c.augment.on_device = False

  # ---- model ------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # resnet18 | resnet34 | resnet50 | resnet_tiny (tests) | vit_tiny |
  # vit_small | vit_base | vit_large | vit_test (tests)
  c.model.name = "resnet18"
  # ResNets only:
  c.model.stem = "cifar"  # cifar (3x3/1, no max-pool) | imagenet (7x7/2 + max-pool)
  c.model.width_multiplier = 1.0
  # ViTs only:
  c.model.patch_size = 16  # 16 at 224 px; 4 or 8 at 32-96 px; divides image_size
  c.model.posemb = "sincos2d"  # sincos2d (fixed, MoCo v3) | learned (timm)
  c.model.pool = "token"  # token (class token) | gap (mean of the patch tokens)
  # Stochastic depth of the last block (linear in depth); 0 in pretraining
  # (MoCo v3), 0.1 for DINO's ViT-S/16.
  c.model.drop_path = 0.0
  # The first remat_blocks blocks recompute their activations in the
  # backward pass (memory for FLOPs); 0 none, the depth (12, 24) all.
  c.model.remat_blocks = 0
  # MoCo v3's frozen random patch projection: the patch embedding keeps its
  # random init (no gradient, no optimizer update).
  c.model.freeze_patch_embedding = False
  c.model.projector_num_layers = 2
  c.model.projector_hidden_dim = 2048
  c.model.projector_output_dim = 128
  c.model.projector_last_bn = True  # BatchNorm on the last projector layer too (public MIO code)
  # BatchNorm statistics of the two views: "joint" (one pass over both, as
  # SimCLR) or "per_view" (two passes, as the public MIO code).
  c.bn_views = "joint"
  c.dtype = "float32"  # compute dtype: float32 | bfloat16 (params, loss, optimizer stay float32)

  # ---- loss -------------------------------------------------------------
  c.loss = "mio"  # mio | bce | nt_xent | dcl
  c.temperature = 0.5  # tau_p (and tau_n unless negative_temperature is set)
  c.negative_temperature = config_dict.placeholder(float)  # tau_n; None: = temperature
  c.reg_weight = 0.0  # lambda of the alignment regulariser (mio, bce only)
  # Images per block of the streamed (chunked) loss and pair metrics: memory
  # O(N * block) instead of O(N^2), same values; must divide the batch per
  # device. None: dense (fastest while the (2N, 2N) logits fit).
  c.loss_block_size = config_dict.placeholder(int)

  # ---- optimisation -----------------------------------------------------
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lars"  # lars | sgd | adamw
  c.optimizer.base_lr = 1.0
  c.optimizer.lr_scaling = "linear"  # linear: lr = base_lr * batch_size / 256 | none
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.warmup_start_lr = 0.0  # lr at step 0, rising linearly to the peak
  c.optimizer.final_lr = 0.0  # lr at the end of the cosine
  # Epochs of the cosine horizon; None: the run's length. Longer than the
  # run stops part-way down the cosine (the public code: 250 of 1,000).
  c.optimizer.schedule_epochs = config_dict.placeholder(float)
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001  # LARS eta
  c.optimizer.grad_clip_norm = config_dict.placeholder(float)

  c.batch_size = 512  # global, over all devices and processes
  c.num_epochs = 200
  c.total_steps = config_dict.placeholder(int)  # None: num_epochs epochs; else > 0

  # ---- checkpoints, logging, monitoring ---------------------------------
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # Comma-separated config keys a resumed run may change on purpose (e.g.
  # "total_steps" to train longer). The checkpoints record the whole config;
  # a resume that changes any other key stops, except the few that only say
  # how to log, save and evaluate (mio_jax/resume_guard.py: FREE_KEYS).
  c.resume_allow_changes = ""
  c.log_every_steps = 50
  c.online_eval_every_steps = 0  # kNN on the eval split during pretraining; 0 disables
  # A linear classifier on the stop-gradient backbone features of both views,
  # trained inside the pretraining step on its labelled rows with its own
  # optimizer (BYOL, solo-learn); its accuracy is logged every log step.
  # It never changes the encoder.
  c.online_probe = ml_collections.ConfigDict()
  c.online_probe.enabled = True
  c.online_probe.lr = 0.1  # SGD, momentum 0.9, constant (solo-learn's 0.1)
  # Weights & Biases, beside metrics.jsonl and the TensorBoard events (which
  # stay): off unless wandb_project is set (needs `pip install wandb`).
  c.logging = ml_collections.ConfigDict()
  c.logging.wandb_project = config_dict.placeholder(str)
  c.logging.wandb_entity = config_dict.placeholder(str)  # None: your default
  c.logging.wandb_mode = "offline"  # offline (no network; `wandb sync` later) | online

  # ---- evaluation of the frozen encoder ---------------------------------
  c.eval = ml_collections.ConfigDict()
  # The saved step the evaluation modes restore; None: the latest.
  c.eval.step = config_dict.placeholder(int)
  # An exported encoder (python -m mio_jax.cli.export) to evaluate instead
  # of the workdir's checkpoints.
  c.eval.encoder_file = config_dict.placeholder(str)
  c.eval.batch_size = 512  # feature extraction, global
  c.eval.embedding_plot_points = 2000  # 0 disables the t-SNE plot

  # Each frozen-feature protocol's own section (mio_jax.evaluation.protocols).
  # kNN: cosine similarity, votes weighted by exp(sim / temperature).
  # k = 200, T = 0.07: InstDisc's weighted kNN (lemniscate.pytorch main.py);
  # solo-learn's WeightedKNNClassifier defaults to k = 20, T = 0.07, lightly's
  # knn_predict to k = 200, T = 0.1: set those to compare with their numbers.
  c.knn = ml_collections.ConfigDict()
  c.knn.k = 200
  c.knn.temperature = 0.07
  # Few-label: the feature probe on `shots` labels per class, mean of `trials`.
  c.fewshot = ml_collections.ConfigDict()
  c.fewshot.shots = 5
  c.fewshot.trials = 5
  # The feature probe: a linear classifier (SGD, Nesterov, cosine) on the
  # standardised centre-crop features of every labelled training image.
  c.feature_probe = ml_collections.ConfigDict()
  c.feature_probe.epochs = 100
  c.feature_probe.lr = 0.1
  c.feature_probe.weight_decay = 0.0
  c.feature_probe.batch_size = 256

  # ---- augmented linear evaluation (--mode=linear_eval) --------------------
  # A linear head on the frozen backbone, trained on random resized crops
  # (+ flip) of the labelled train split streamed from the pipeline
  # (mio_jax.supervised). Checkpointed in <workdir>/linear_eval/.
  c.linear_eval = ml_collections.ConfigDict()
  # "simclr": SimCLR's / BYOL's / solo-learn's protocol (these defaults).
  # "public_code": the public MIO code's (Trainer.downstream): early stopping
  # on validation_split (the head of the lowest validation loss is tested);
  # configs/cifar10_public_code.py sets its other values.
  c.linear_eval.recipe = "simclr"
  # SimCLR's ImageNet linear evaluation trains 90 epochs (the google-research
  # /simclr README's linear-head command: --train_epochs=90); solo-learn's
  # linear configs use 100.
  c.linear_eval.epochs = 90.0
  c.linear_eval.batch_size = 256  # global
  # Peak lr = base_lr * batch_size / 256 under lr_scaling "linear": SimCLR's
  # linear head command uses --learning_rate=0.1 with its linear scaling.
  c.linear_eval.base_lr = 0.1
  c.linear_eval.lr_scaling = "linear"  # linear | none
  # "cosine" to 0 (SimCLR) | "step": times lr_decay after every epoch.
  c.linear_eval.schedule = "cosine"
  c.linear_eval.lr_decay = 0.98
  # SimCLR's --optimizer=momentum is Nesterov (model_util.get_optimizer:
  # MomentumOptimizer(..., use_nesterov=True)), with its cosine decay and,
  # in the linear-head commands, --warmup_epochs=0.
  c.linear_eval.momentum = 0.9
  c.linear_eval.nesterov = True
  c.linear_eval.weight_decay = 0.0  # SimCLR's CIFAR-10 linear head: 0
  # Random resized crop area range: Inception's (0.08, 1), which solo-learn's
  # linear evaluation uses for CIFAR, STL-10 and ImageNet
  # (solo/data/classification_dataloader.py) and SimCLR's fine-tuning crops;
  # a config overrides it for its data (digits).
  c.linear_eval.crop_scale = (0.08, 1.0)
  c.linear_eval.hflip = config_dict.placeholder(bool)  # None: augment.hflip
  # The frozen backbone's BatchNorm: "running" statistics (SimCLR) or the
  # "batch"'s, updating the running ones (the public code trains the head
  # with its model in train mode).
  c.linear_eval.backbone_bn = "running"
  # TFDS split expressions: what the head trains on (None: the train split)
  # and, for recipe "public_code", the held-out split of its early stopping.
  c.linear_eval.train_split = config_dict.placeholder(str)
  c.linear_eval.validation_split = config_dict.placeholder(str)
  c.linear_eval.patience = 5  # epochs without a better validation loss

  # ---- semi-supervised fine-tuning (--mode=finetune) -----------------------
  # Backbone + a new linear head (projector dropped) fine-tuned on a fixed,
  # stratified labelled subset, BatchNorm in train mode (mio_jax.supervised).
  # Defaults: SimCLR v1's fine-tuning recipe (appendix B.5): Nesterov SGD,
  # momentum 0.9, lr 0.05 * batch / 256, no warm-up, no weight decay or other
  # regularisation, random crop and flip only, 60 epochs at 1% of the labels
  # and 30 at 10%. Checkpointed in <workdir>/finetune/, the subset written to
  # <workdir>/finetune/subset.json. Both protocols run SimCLR's count of
  # steps: labelled examples * epochs // batch_size + 1.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.label_fraction = 0.1  # of each class; 1.0: every label
  # Labels per class instead of a fraction; None or 0: use label_fraction.
  c.finetune.labels_per_class = config_dict.placeholder(int)
  # None: SimCLR's 60 epochs at <= 1% of the labels, else 30.
  c.finetune.epochs = config_dict.placeholder(float)
  c.finetune.batch_size = 256  # global (SimCLR: 4096)
  # SimCLR B.5: lr = 0.05 * batch_size / 256 (as remembered: the appendix
  # could not be opened from here; the linear scaling rule itself is the
  # simclr repo's model_util.learning_rate_schedule).
  c.finetune.base_lr = 0.05
  c.finetune.lr_scaling = "linear"
  c.finetune.schedule = "cosine"
  c.finetune.lr_decay = 0.98  # schedule "step" only
  c.finetune.momentum = 0.9  # SimCLR B.5
  c.finetune.nesterov = True  # SimCLR B.5
  c.finetune.weight_decay = 0.0  # SimCLR B.5: no regularisation
  c.finetune.crop_scale = (0.08, 1.0)  # as linear_eval.crop_scale
  c.finetune.hflip = config_dict.placeholder(bool)  # None: augment.hflip
  # Where the encoder comes from: a pretraining workdir (its step init_step,
  # None: the latest) or an exported encoder file (python -m
  # mio_jax.cli.export); "" : random initialisation, the baseline.
  c.finetune.init_from = ""
  c.finetune.init_step = config_dict.placeholder(int)
  # ViTs only: BEiT's / MAE's layer-wise lr decay (the lr of block i of L
  # times layer_decay**(L + 1 - i), embeddings as block 0; 1.0: none; MAE
  # fine-tunes ViT-B at 0.65) and the drop path rate while fine-tuning (MAE's
  # ViT-B: 0.1), which replaces model.drop_path.
  c.finetune.layer_decay = 1.0
  c.finetune.drop_path = 0.0

  # Locked: assigning a key that does not exist raises, in config files too.
  c.lock()
  return c


def load_config_file(path, config_arg=None) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file given by path, as --config does.

  Used by configs that extend a sibling and by tests.
  """
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"mio_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if config_arg is None:
    return module.get_config()
  return module.get_config(config_arg)
