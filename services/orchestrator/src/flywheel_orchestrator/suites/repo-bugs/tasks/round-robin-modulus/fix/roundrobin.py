"""Hand out jobs to workers in turn."""


def assign(jobs, workers):
    """Map each worker to its jobs; job i goes to worker i modulo the number of workers."""
    if not workers:
        raise ValueError("no workers")
    plan = {w: [] for w in workers}
    for i, job in enumerate(jobs):
        plan[workers[i % len(workers)]].append(job)
    return plan


def load(plan):
    """Number of jobs per worker."""
    return {w: len(js) for w, js in plan.items()}


def busiest(plan):
    """The worker with the most jobs (the first one listed on ties)."""
    counts = load(plan)
    return max(counts, key=counts.get)
