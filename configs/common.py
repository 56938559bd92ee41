"""Defaults shared by every experiment config; each config file overrides what it needs."""

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    """The BYOL recipe (ResNet-50, ImageNet, 1000 epochs) as the base of all configs."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 4096  # global, over all devices and processes
    config.num_epochs = 1000
    config.num_steps = -1  # > 0 overrides num_epochs
    config.warmup_epochs = 10.0
    # Warmup takes at most this share of the steps (short runs: num_steps, few epochs).
    config.max_warmup_fraction = 0.1
    config.log_every_steps = 100
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    # CPU only: time XLA flag sets and per-shape convolution choices on this machine once (cached
    # in ~/.cache/byol_jax/cpu_autotune) when model.conv_impl is "auto" and XLA_FLAGS is unset.
    config.cpu_autotune = True
    # Saves copy the state off the devices, then write in the background (Orbax async).
    config.async_checkpoints = True
    config.tensorboard = True  # WORKDIR/tensorboard event files (metrics.jsonl is always written)
    # Persistent XLA compilation cache: a restarted run skips compiling. Folder "" means
    # WORKDIR/compilation_cache (a bucket path works); JAX_COMPILATION_CACHE_DIR, if set, wins.
    config.compilation_cache = True
    config.compilation_cache_dir = ""
    # Device-to-host transfers on steps that neither log nor save: "disallow" raises on an
    # implicit one (it would make the host wait on the devices every step).
    config.transfer_guard = "disallow"
    # (first, last): jax.profiler trace of those steps into WORKDIR/profile, for TensorBoard.
    config.profile_steps = ()

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.base_lr = 0.2  # scaled by batch_size / 256
    config.optimizer.weight_decay = 1.5e-6
    config.optimizer.momentum = 0.9
    config.optimizer.trust_coefficient = 1e-3
    config.base_tau = 0.996

    config.model = ml_collections.ConfigDict()
    config.model.encoder = "resnet50"
    config.model.width = 1
    config.model.base_width = 64
    config.model.stem = "imagenet"
    # Released-network parity switches (configs/imagenet.py turns them on): the last BN scale of
    # every residual branch starts at 0; "same" = XLA 'SAME' padding (asymmetric at stride 2);
    # a 1x1 projection shortcut in the first block of every stage (changes ResNet-18/34 only).
    config.model.zero_init_last_bn = False
    config.model.padding = "symmetric"  # or "same"
    config.model.projection_shortcuts = False
    config.model.projector_hidden_dim = 4096
    config.model.projector_dim = 256
    config.model.predictor_hidden_dim = 4096
    config.model.dtype = "float32"  # or "bfloat16": compute only; params and loss stay f32
    config.model.conv_impl = "auto"  # "matmul" on CPU, "native" on GPU/TPU

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "imagenet2012"  # a tfds name, "folder" or "packed" (docs/data.md)
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    # dataset="folder": a folder of images (local or gs://); "packed": byol_jax.prepare's --out.
    config.data.folder = ""
    # Folders: first-level subfolders are the classes (a split/label/ layout is always detected).
    config.data.folder_labels = False
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    # Host resize: training keeps the whole image, longer side -> source_size, padded to a square
    # (square datasets: just resized); evaluation resizes the shorter side and centre-crops.
    config.data.source_size = 256
    # Training's host size if different (0: source_size); evaluation keeps source_size, so
    # ImageNet trains from 384 px whole images and still evaluates resize-256 / crop-224.
    config.data.train_source_size = 0
    config.data.image_size = 224  # training resolution after the on-device random crop
    config.data.eval_crop_fraction = 0.875  # 224 of 256 at test time
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.data.idx_dir = "/usr/share/datasets/fashion-mnist"
    config.data.shuffle_buffer = 10_000  # records, over all processes and stream shards
    # Streamed tfds data is read as this many fixed shards, so the global batches are the same
    # for any process count dividing it; it must divide batch_size. 0: the largest count <= 64
    # that divides batch_size (and is a multiple of the process count). In-memory data ignores it.
    config.data.stream_shards = 0
    config.data.max_bad_records = 100  # per process: undecodable records skipped (and counted)
    config.data.eval_batch_size = 512

    # Evaluators (byol_jax/evaluators): name -> dict(type, every_steps (> 0: periodic during
    # pretraining, and at the last step), at_end (after pretraining), the type's own options).
    # Splits left "" are data.train_split / data.eval_split. --mode=knn / linear_eval /
    # fine_tune / baselines runs the entries of that type on a workdir's newest checkpoint.
    config.evals = ml_collections.ConfigDict()
    config.evals.probe = dict(type="probe", at_end=True)  # the online probe's test accuracy
    config.evals.knn = dict(
        type="knn",
        every_steps=0,
        train_split="train[:10000]",
        test_split="test[:2000]",
        k=200,
        temperature=0.1,
    )
    # BYOL, random init and raw pixels, scored alike: logistic regression to convergence on
    # standardized features, its L2 strength chosen per row from l2_grid on a held-out part of
    # train (a choice at the grid's edge extends the grid past it while extend_l2_grid); kNN at
    # knn_ks.
    config.evals.table = dict(
        type="baselines",
        at_end=False,
        l2_grid=(1e-2, 1e-3, 1e-4),
        extend_l2_grid=True,
        max_iter=500,  # L-BFGS steps per fit; a row that stops here is marked "*"
        holdout_fraction=0.1,
        knn_ks=(20, 200),
        knn_temperature=0.1,
        rows=("byol", "random_init", "raw_pixels"),  # ("byol",) when comparing runs
    )
    # The paper's linear protocol (appendix C.1): frozen encoder, SGD Nesterov, random crops;
    # augment=False computes the features once. lr_sweep e.g. (0.4, 0.3, 0.2, 0.1, 0.05).
    config.evals.linear = dict(
        type="linear", epochs=80, base_lr=0.2, batch_size=1024, augment=True, lr_sweep=()
    )
    # Semi-supervised (appendix C.2): fine-tune encoder + classifier on a label fraction.
    config.evals.fine_tune = dict(
        type="fine_tune", label_fraction=0.1, epochs=30, base_lr=0.2, batch_size=1024
    )

    # The paper's per-view probabilities; change only for ablations.
    config.augment = ml_collections.ConfigDict()
    config.augment.crop_area_min = 0.08  # random resized crop keeps U[min, 1] of the area
    # ...with width/height drawn log-uniformly from this range, then resized to a square.
    config.augment.crop_aspect_range = (3 / 4, 4 / 3)
    config.augment.blur_prob = (1.0, 0.1)
    config.augment.solarize_prob = (0.0, 0.2)
    # Colour jitter: applied with jitter_prob (both views); jitter_strength scales the paper's
    # brightness 0.4, contrast 0.4, saturation 0.2 and hue 0.1 (hue capped at 0.5).
    config.augment.jitter_prob = 0.8
    config.augment.jitter_strength = 1.0
    return config
