"""Training: the settings of a run, the loop, its resume point, and several processes.

    config.py       TrainConfig (one field per `charnn train` flag), resolve(); presets.py
    api.py          train() / run_training(): the one call behind `charnn train`
    setup.py        the run's corpus, the model, the optimizer and mixed precision
    loop.py         Trainer: steps, evaluation, metrics, saving; Summary
    schedule.py     step target, stop reasons, time budget, learning-rate schedule
    state.py        ResumeState (the counters, saved and restored as one), RNG and hidden state
    distributed.py  torchrun: Dist, session(), agreeing across ranks
    plot.py         the loss curve
    finetune.py     --init-from: a run that starts from another run's weights

May import data, models, checkpoint, evaluate, devices, files, settings and progress;
nothing above it (infer, serve, lab, cli). Kept empty of code so that `charnn sample`
does not import the training stack.
"""
