"""First-order meta-learning: Reptile (Nichol et al., 2018) over a family of few-shot tasks."""

import numpy as np


def adapt(model, x, y, steps, batch_size=None):
    """Fine-tunes a compiled model on one task's support set for `steps` full- or mini-batch steps.

    The optimizer's state (step count, moments; not its learning rate)
    restarts first, so every task is adapted to the same way.

    Args:
        model: a compiled `keras.Model` (its optimizer is the inner-loop optimizer).
        x, y: the support examples.
        steps: gradient steps.
        batch_size: examples per step (default: all of them).

    Returns:
        The loss of the last step.
    """
    for v in model.optimizer.variables:
        if v.name != "learning_rate":
            v.assign(np.zeros(v.shape, v.dtype))
    count = len(y)
    batch_size = batch_size or count
    loss = None
    for step in range(steps):
        start = (step * batch_size) % count
        index = np.arange(start, start + batch_size) % count
        loss = model.train_on_batch(_take(x, index), y[index])
    return float(np.asarray(loss).reshape(-1)[0])


def reptile(model, sample_task, meta_steps, inner_steps=5, meta_learning_rate=0.5, seed=0, print_fn=None,
            log_every=100):
    """Meta-learns an initialisation with Reptile: adapt to a sampled task, move the weights towards the result.

    Each meta-step samples a task, runs `inner_steps` steps of the model's
    compiled optimizer on it (`adapt`), and moves the starting weights a
    fraction of the way to the adapted ones: `theta += eps * (theta' - theta)`,
    with `eps` decaying linearly from `meta_learning_rate` to 0. That is a
    first-order approximation of MAML that needs no second derivatives.

    Args:
        model: a compiled `keras.Model`; its weights are the initialisation to learn (updated in place).
        sample_task: `fn(rng) -> (x, y)`, one task's training examples.
        meta_steps: tasks to meta-train on.
        inner_steps: gradient steps per task.
        meta_learning_rate: the outer step size at the start.
        seed: seed of the `numpy` generator passed to `sample_task`.
        print_fn: progress lines go here every `log_every` meta-steps (None: silent).
        log_every: meta-steps between progress lines.

    Returns:
        The inner loss after adaptation, one per meta-step.
    """
    if not isinstance(meta_steps, int) or meta_steps < 1:
        raise ValueError(f"`meta_steps` must be a positive integer; received meta_steps={meta_steps!r}.")
    if not 0 < meta_learning_rate <= 1:
        raise ValueError(f"`meta_learning_rate` must be in (0, 1]; received meta_learning_rate={meta_learning_rate!r}.")
    rng = np.random.default_rng(seed)
    variables = model.trainable_weights
    losses = []
    for step in range(meta_steps):
        start = [v.numpy() for v in variables]
        x, y = sample_task(rng)
        losses.append(adapt(model, x, y, inner_steps))
        epsilon = meta_learning_rate * (1 - step / meta_steps)
        for v, before in zip(variables, start):
            v.assign(before + epsilon * (v.numpy() - before))
        if print_fn and (step + 1) % log_every == 0:
            print_fn(f"meta-step {step + 1}: inner loss {np.mean(losses[-log_every:]):.4f}")
    return losses


def _take(x, index):
    if isinstance(x, dict):
        return {key: value[index] for key, value in x.items()}
    return x[index]
