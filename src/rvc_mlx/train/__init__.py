"""Training RVC voices on MLX: a pipeline of resumable steps over one experiment folder.

Each step is a library function (and a ``rvc-mlx train STEP`` subcommand); ``rvc-mlx train`` runs them in order.

1. ``prepare``  (:mod:`.prepare`): recordings -> sliced, normalised segments at the model rate and at 16 kHz
2. ``features`` (:mod:`.features`): HuBERT/ContentVec features and F0 per segment
3. ``index``    (:mod:`.index`): RVC's IVF index over the features
4. ``fit``      (:mod:`.fit`): the GAN training loop (networks in :mod:`.nets`, losses in :mod:`.losses`)
5. ``export``   (:mod:`.rvc_pth`): the trained voice as an RVC-format ``.pth`` (written without torch)

The experiment folder keeps RVC's layout, so a dataset moves between RVC, Applio and rvc-mlx::

    EXP/0_gt_wavs/{file}_{segment}.wav      segments at the model's sample rate (float32)
    EXP/1_16k_wavs/{file}_{segment}.wav     the same segments at 16 kHz
    EXP/2a_f0/{file}_{segment}.wav.npy      coarse pitch 1..255 per 10 ms frame (f0 models)
    EXP/2b-f0nsf/{file}_{segment}.wav.npy   f0 in Hz per 10 ms frame (f0 models)
    EXP/3_feature256|768/{file}_{segment}.npy   content features (T, 256|768) at 50 fps
    EXP/added_IVF{n}_Flat_nprobe_1_{name}_{version}.index
"""
