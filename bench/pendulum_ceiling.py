"""How often can ANY policy reach Pendulum-v1 return >= -200? A near-optimal controller by dynamic programming

    python bench/pendulum_ceiling.py          # ~1 minute on one core

Finite-horizon value iteration (200 steps, the episode length) on a grid over (angle, angular velocity) with
the env's own dynamics and cost (gymnasium's pendulum.py, copied below), bilinear interpolation between grid
points and 41 torques in [-2, 2]. The greedy policy of that value function is then run in the real env on
the evaluation seeds control.py uses; its success rate is an achievable level (a lower bound on the best
possible), and the per-start-angle table shows which starts no controller can bring under 200 of cost.
Writes bench/results/pendulum_ceiling.json.
"""
import json
import os

import gymnasium as gym
import numpy as np

G, M, L, DT, MAX_SPEED, MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0
TH = np.linspace(-np.pi, np.pi, 241)  # grid over the angle (periodic) and the angular velocity
THD = np.linspace(-MAX_SPEED, MAX_SPEED, 161)
U = np.linspace(-MAX_TORQUE, MAX_TORQUE, 41)
HORIZON = 200
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalise(th):
    return (th + np.pi) % (2 * np.pi) - np.pi


def step(th, thd, u):
    """gymnasium Pendulum-v1 step: cost of (th, thd, u), then the next state."""
    cost = normalise(th) ** 2 + 0.1 * thd ** 2 + 0.001 * u ** 2
    new_thd = thd + (3 * G / (2 * L) * np.sin(th) + 3.0 / (M * L ** 2) * u) * DT
    new_thd = np.clip(new_thd, -MAX_SPEED, MAX_SPEED)
    return cost, normalise(th + new_thd * DT), new_thd


def interp(V, th, thd):
    """Bilinear interpolation of V (grid TH x THD) at the points (th, thd); the angle wraps around."""
    fi = (th + np.pi) / (TH[1] - TH[0])
    fj = (thd + MAX_SPEED) / (THD[1] - THD[0])
    i0, j0 = np.floor(fi).astype(int), np.clip(np.floor(fj).astype(int), 0, len(THD) - 2)
    a, b = fi - i0, np.clip(fj - j0, 0, 1)
    i0, i1 = i0 % (len(TH) - 1), (i0 + 1) % (len(TH) - 1)  # TH[-1] is TH[0] again
    return ((1 - a) * (1 - b) * V[i0, j0] + a * (1 - b) * V[i1, j0] + (1 - a) * b * V[i0, j0 + 1]
            + a * b * V[i1, j0 + 1])


def main():
    th, thd, u = np.meshgrid(TH, THD, U, indexing="ij")
    cost, nth, nthd = step(th, thd, u)
    V = np.zeros((len(TH), len(THD)))
    policies = []  # greedy torque index per grid point, for steps-to-go 1..HORIZON
    for _ in range(HORIZON):
        Q = cost + interp(V, nth, nthd)
        policies.append(Q.argmin(-1))
        V = Q.min(-1)
    env = gym.make("Pendulum-v1")
    returns, angles = [], []
    for seed in range(10**9, 10**9 + 500):  # control.py's evaluation seeds (EVAL_SEED0 = 10**9)
        obs, _ = env.reset(seed=seed)
        angles.append(abs(np.arctan2(obs[1], obs[0])))
        total = 0.0
        for t in range(HORIZON):
            s_th, s_thd = env.unwrapped.state
            pol = policies[HORIZON - 1 - t]  # steps to go: HORIZON - t
            k = interp(pol.astype(float), np.array([s_th]), np.array([s_thd]))  # nearest-ish torque index
            obs, r, *_ = env.step(np.array([U[int(round(float(k[0])))]], dtype=np.float32))
            total += r
        returns.append(total)
    returns, angles = np.array(returns), np.array(angles)
    rows = []
    for lo in np.arange(0, np.pi, 0.4):
        m = (angles >= lo) & (angles < lo + 0.4)
        rows.append(dict(start_angle=[round(lo, 1), round(lo + 0.4, 1)], episodes=int(m.sum()),
                         mean_return=float(returns[m].mean()), min_return=float(returns[m].min()),
                         success=float((returns[m] >= -200).mean())))
        print(f"|angle| {lo:.1f}-{lo + 0.4:.1f}: {m.sum():3d} episodes, "
              f"mean return {returns[m].mean():7.1f}, "
              f"worst {returns[m].min():7.1f}, return >= -200: {(returns[m] >= -200).mean():.2f}")
    result = dict(episodes=len(returns), mean_return=float(returns.mean()),
                  success_rate=float((returns >= -200).mean()), by_start_angle=rows,
                  dp_value_mean=float(-interp(V, np.array([0.0]), np.array([0.0]))[0]))
    print(f"DP controller: mean return {returns.mean():.1f}, "
          f"success (return >= -200) {result['success_rate']:.2f}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "pendulum_ceiling.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
