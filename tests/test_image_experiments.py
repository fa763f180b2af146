"""The depth and dead-zone analyses on a sweep over several image data sets: claims per set."""

from cell_records import make_record
from resdyn.experiments import dead_zone, depth


def _row(data, family, seed, acc, gap, **model):
    return make_record(spec="x", data=data, model={"family": family, **model}, seed=seed,
                       sample_size=1000,
                       metrics={"test_acc": acc, "train_acc": acc + gap, "error_gap": gap,
                                "loss_gap": gap, "test_loss": 1 - acc, "train_loss": 1 - acc - gap})


def test_depth_claims_are_made_per_data_set_for_image_families():
    rows = []
    for data, base in (("mnist", 0.97), ("fashion-mnist", 0.8)):
        for s in range(5):
            rows += [_row(data, "image_resnet", s, base + 0.002 * s + 0.001 * L / 64, 0.01, depth=L)
                     for L in (2, 4, 8, 16)]
            rows.append(_row(data, "image_ode_resnet", s, base + 0.002 * s + 0.0005, 0.01, knots=4))
    out = depth.analyze(rows)
    texts = [c.text for c in out.claims]
    for data in ("mnist", "fashion-mnist"):
        assert f"{data}: test accuracy settles as L grows, toward the continuous-time model" in texts
        assert f"{data}: loss and accuracy against depth" in out.tables
    settle = {c.text: c.verdict for c in out.claims if "settles" in c.text}
    assert set(settle.values()) == {"held"}  # every depth within 0.001 of the ODE, 5 seeds
    sat = {c.text.split(":")[0]: c.verdict for c in out.claims if "saturation" in c.text}
    assert sat == {"mnist": "not held", "fashion-mnist": "held"}  # MNIST's 0.97 is saturated


def test_dead_zone_pairs_within_each_data_set():
    rows = []
    for data, sign in (("mnist", -1), ("fashion-mnist", +1)):
        for s in range(5):
            rows.append(_row(data, "image_resnet", s, 0.95, 0.05 + 0.001 * s, activation="relu"))
            rows.append(_row(data, "image_resnet", s, 0.95, 0.05 + 0.001 * s + sign * (0.02 + 0.002 * s),
                             activation="soft_threshold", tau=0.25))
    out = dead_zone.analyze(rows)
    gap = {c.text.split(":")[0]: c.verdict for c in out.claims if "generalizes better" in c.text}
    # Smaller gaps than relu on mnist in every seed, larger on fashion-mnist: pooled, they would cancel.
    assert gap == {"mnist": "held", "fashion-mnist": "not held"}
    term = [c for c in out.claims if "term is positive" in c.text]
    assert term and all(c.verdict == "inconclusive" for c in term)  # no term is recorded for images


def test_the_settling_claim_reads_the_three_deepest_depths():
    """L = 2 is 0.1 below the ODE and L = 4, 8, 16 within 0.001 of it: the claim is about the
    deepest three, so it holds, with the differences acc(L) - acc(ODE) = 0.001 L / 64 - 0.0005."""
    rows = []
    for s in range(5):
        rows += [_row("mnist", "image_resnet", s, 0.80 + 0.002 * s + (-0.1 if L == 2 else 0.001 * L / 64),
                      0.01, depth=L) for L in (2, 4, 8, 16)]
        rows.append(_row("mnist", "image_ode_resnet", s, 0.80 + 0.002 * s + 0.0005, 0.01, knots=4))
    claim = next(c for c in depth.analyze(rows).claims if "settles" in c.text)
    assert claim.verdict == "held"
    diffs = {L: v["diff"] for L, v in claim.values.items() if L != "verdict"}
    assert sorted(diffs) == [4, 8, 16]
    for L, d in diffs.items():
        assert abs(d - (0.001 * L / 64 - 0.0005)) < 1e-9
