"""The decision path's arithmetic: every expert and every task's gate in one fused numpy pass.

All experts of a mixture share one architecture (an MLP student), so their layers stack:

- layer 1 of all ``E`` experts is one (S*F, E*h) matrix: one matrix-vector product per decision;
- layer 2 and the heads are batched matrix products over the expert axis, (E, h, z) and
  (E, z, O);
- each task's ``M`` experts are gathered with precomputed index arrays (T, M), and the gates of
  all ``T`` tasks run batched over the task axis: the Hajek kernel is (T, z+1, k) and (T, k, D).

The arrays are built from the same tensors as the torch :class:`~cmm.moe.mixture.MixtureModel`
(torch layout: ``weight`` is (out, in)), so both give the same numbers to float32 precision;
torch is not needed here.

Two implementations of the same arithmetic: :meth:`FusedMixture.predict` (numpy, any batch:
backtests and evaluation) and :meth:`FusedMixture.predict_one` (one decision: a single call of
the numba kernel :func:`_fused_one` that runs experts, gate and mixing with no allocation and no
per-operation dispatch; at batch 1 a chain of ~30 small numpy calls costs more than the
arithmetic). ``benchmarks/bench_latency.py`` times both and the torch modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from cmm.errors import InputError

EPS = 1e-8
ACT_CODES = {"relu": 0, "tanh": 1, "gelu": 2}
GATE_CODES = {"hajek": 0, "mean": 1, "regime": 2, "router": 3}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _act(name: str, a: np.ndarray) -> np.ndarray:
    """In place where possible."""
    if name == "relu":
        return np.maximum(a, 0.0, out=a)
    if name == "tanh":
        return np.tanh(a, out=a)
    if name == "gelu":  # tanh approximation, as torch's GELU(approximate="tanh")
        return 0.5 * a * (1.0 + np.tanh(_SQRT_2_OVER_PI * (a + 0.044715 * a ** 3)))
    raise InputError("unknown activation", field="activation", expected="relu, tanh, gelu",
                     got=name)


@njit(cache=True, inline="always")
def _act1(code: int, v: float) -> float:
    if code == 0:
        return v if v > 0.0 else 0.0
    if code == 1:
        return math.tanh(v)
    return 0.5 * v * (1.0 + math.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))


@njit(cache=True, fastmath=True)
def _fused_one(xf, w1, b1, w2, b2, wh, bh, route_e, route_o, act, gate, k1z, k1y, c1, k2, c2,
               gate_act, inv_tau, expert_regimes, regime, r1, rb1, y_mean, y_std,
               hbuf, zbuf, ybuf, ubuf, phibuf, vbuf, out_y, out_w):
    """One decision, in place: out_y (T,) in units, out_w (T, M). Same arithmetic as
    FusedMixture.experts + weights (float32 storage, float32/64 accumulation)."""
    E, H, Z = w2.shape
    O = wh.shape[2]
    EH = E * H
    for j in range(EH):
        hbuf[j] = b1[j]
    for i in range(xf.shape[0]):  # layer 1 of every expert: one (S*F) x (E*h) product
        xi = xf[i]
        for j in range(EH):
            hbuf[j] += xi * w1[i, j]
    for j in range(EH):
        hbuf[j] = _act1(act, hbuf[j])
    for e in range(E):  # layer 2 and head, per expert (inner loops contiguous)
        for k in range(Z):
            zbuf[e, k] = b2[e, k]
        for j in range(H):
            hv = hbuf[e * H + j]
            for k in range(Z):
                zbuf[e, k] += hv * w2[e, j, k]
        for k in range(Z):
            zbuf[e, k] = _act1(act, zbuf[e, k])
        for o in range(O):
            acc = bh[e, o]
            for k in range(Z):
                acc += zbuf[e, k] * wh[e, k, o]
            ybuf[e, o] = acc
    T, M = route_e.shape
    for t in range(T):
        if gate == 0:  # Hajek: phi, consensus, projection, softmax
            KH = k2.shape[1]
            D = k2.shape[2]
            for d in range(D):
                vbuf[d] = 0.0
            for m in range(M):
                e = route_e[t, m]
                yv = ybuf[e, route_o[t, m]]
                for q in range(KH):
                    ubuf[q] = c1[t, q] + yv * k1y[t, q]
                for k in range(Z):
                    zv = zbuf[e, k]
                    for q in range(KH):
                        ubuf[q] += zv * k1z[t, k, q]
                for q in range(KH):
                    ubuf[q] = _act1(gate_act, ubuf[q])
                for d in range(D):
                    acc = c2[t, d]
                    for q in range(KH):
                        acc += ubuf[q] * k2[t, q, d]
                    phibuf[m, d] = acc
                    vbuf[d] += acc / M
            norm = 0.0
            for d in range(D):
                norm += vbuf[d] * vbuf[d]
            norm = math.sqrt(norm) + 1e-8
            for m in range(M):
                acc = 0.0
                for d in range(D):
                    acc += phibuf[m, d] * vbuf[d]
                out_w[t, m] = acc / norm * inv_tau
        elif gate == 1:  # mean
            for m in range(M):
                out_w[t, m] = 0.0
        elif gate == 2:  # hard routing by regime
            hits = 0
            for m in range(M):
                if expert_regimes[t, m] == regime:
                    hits += 1
            for m in range(M):
                if hits == 0 or expert_regimes[t, m] == regime:
                    out_w[t, m] = 1.0
                else:
                    out_w[t, m] = 0.0
        else:  # linear input router
            for m in range(M):
                acc = rb1[t, m]
                for i in range(xf.shape[0]):
                    acc += xf[i] * r1[t, i, m]
                out_w[t, m] = acc
        if gate == 0 or gate == 3:  # softmax of the logits
            top = out_w[t, 0]
            for m in range(1, M):
                top = max(top, out_w[t, m])
            total = 0.0
            for m in range(M):
                out_w[t, m] = math.exp(out_w[t, m] - top)
                total += out_w[t, m]
        elif gate == 1:
            total = float(M)
            for m in range(M):
                out_w[t, m] = 1.0
        else:
            total = 0.0
            for m in range(M):
                total += out_w[t, m]
        acc = 0.0
        for m in range(M):
            out_w[t, m] /= total
            acc += out_w[t, m] * ybuf[route_e[t, m], route_o[t, m]]
        out_y[t] = acc * y_std[t] + y_mean[t]


@dataclass
class GateArrays:
    """One gate of every task, stacked over tasks."""

    kind: str
    arrays: dict[str, np.ndarray]
    activation: str = "tanh"
    temperature: float = 1.0


class FusedMixture:
    """Numpy form of a mixture. Build it with :meth:`from_state`."""

    def __init__(self, *, window: int, n_features: int, steps: int, activation: str,
                 w1, b1, w2, b2, wh, bh, route_expert, route_output, y_mean, y_std,
                 tasks: tuple[str, ...], gates: dict[str, GateArrays],
                 n_parameters: int = 0) -> None:
        self.window, self.n_features, self.steps = window, n_features, steps
        self.activation = activation
        self.w1, self.b1, self.w2, self.b2, self.wh, self.bh = w1, b1, w2, b2, wh, bh
        self.E, self.h = w2.shape[0], w2.shape[1]
        self.route_expert, self.route_output = route_expert, route_output
        self.T, self.M = route_expert.shape
        self.y_mean, self.y_std = y_mean, y_std
        self.tasks = tasks
        self.gates = gates
        self._offset = (window - steps) * n_features
        self.n_parameters = n_parameters  # the experts' decision-path parameters
        # Work buffers of predict_one (one decision at a time: one FusedMixture per thread).
        f32 = np.float32
        self._hbuf = np.zeros(self.E * self.h, f32)
        self._zbuf = np.zeros(b2.shape, f32)
        self._ybuf = np.zeros(bh.shape, f32)
        self._empty3 = np.zeros((1, 1, 1), f32)
        self._empty2 = np.zeros((1, 1), f32)
        self._kernel_args = {name: self._gate_args(name) for name in gates}

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_state(cls, *, window: int, n_features: int, students: list[dict[str, np.ndarray]],
                   activation: str, steps: int, routes: dict[str, list[tuple[int, int]]],
                   tasks: tuple[str, ...], y_mean, y_std,
                   gates: dict[str, dict[str, dict[str, np.ndarray]]],
                   gate_settings: dict[str, dict] | None = None) -> FusedMixture:
        """``students``: torch-layout state per expert; ``routes``: task -> [(expert, output)];
        ``gates``: gate name -> task -> its torch-layout state; ``y_mean``/``y_std``: (T,)."""
        f32 = np.float32
        counts = {len(routes[t]) for t in tasks}
        if len(counts) != 1:
            raise InputError("the fused path needs the same number of experts for every task",
                             field="routes", expected="equal counts",
                             got={t: len(routes[t]) for t in tasks})
        shapes = {(s["fc1.weight"].shape, s["fc2.weight"].shape) for s in students}
        if len(shapes) != 1:
            raise InputError("the fused path needs experts of one architecture",
                             field="experts", expected="equal layer shapes", got=sorted(shapes))
        n_out = max(s["head.weight"].shape[0] for s in students)
        z_dim = students[0]["fc2.weight"].shape[0]
        w1 = np.ascontiguousarray(np.concatenate([s["fc1.weight"].T for s in students], axis=1),
                                  f32)
        b1 = np.concatenate([s["fc1.bias"] for s in students]).astype(f32)
        w2 = np.ascontiguousarray(np.stack([s["fc2.weight"].T for s in students]), f32)
        b2 = np.stack([s["fc2.bias"] for s in students]).astype(f32)
        wh = np.zeros((len(students), z_dim, n_out), f32)
        bh = np.zeros((len(students), n_out), f32)
        for e, s in enumerate(students):
            o = s["head.weight"].shape[0]
            wh[e, :, :o] = s["head.weight"].T
            bh[e, :o] = s["head.bias"]
        re = np.array([[i for i, _ in routes[t]] for t in tasks], np.int64)
        ro = np.array([[o for _, o in routes[t]] for t in tasks], np.int64)
        settings = gate_settings or {}
        fused_gates = {}
        for name, per_task in gates.items():
            st = settings.get(name, {})
            fused_gates[name] = _stack_gate(name, [per_task[t] for t in tasks], st)
        return cls(window=window, n_features=n_features, steps=steps, activation=activation,
                   w1=w1, b1=b1, w2=w2, b2=b2, wh=wh, bh=bh, route_expert=re, route_output=ro,
                   y_mean=np.asarray(y_mean, f32), y_std=np.asarray(y_std, f32),
                   tasks=tuple(tasks), gates=fused_gates,
                   n_parameters=int(sum(a.size for st in students for a in st.values())))

    # -- computation -----------------------------------------------------------------------------
    def experts(self, xf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """xf: (B, S*F) -> per task z (B, T, M, z) and y (B, T, M), standardised."""
        B = xf.shape[0]
        h = _act(self.activation, xf @ self.w1 + self.b1).reshape(B, self.E, 1, self.h)
        z = _act(self.activation, (h @ self.w2)[:, :, 0, :] + self.b2)  # (B, E, z)
        yo = (z[:, :, None, :] @ self.wh)[:, :, 0, :] + self.bh  # (B, E, O)
        return z[:, self.route_expert], yo[:, self.route_expert, self.route_output]

    def weights(self, gate: str, z: np.ndarray, y: np.ndarray, xf: np.ndarray,
                regime: np.ndarray | None) -> np.ndarray:
        """(B, T, M) weights of ``gate``, summing to one over M."""
        if gate not in self.gates:
            raise InputError("gate not in this mixture", field="gate",
                             expected=", ".join(self.gates), got=gate)
        g = self.gates[gate]
        a = g.arrays
        B = z.shape[0]
        if g.kind == "mean":
            return np.full((B, self.T, self.M), 1.0 / self.M, np.float32)
        if g.kind == "regime":
            if regime is None:
                return np.full((B, self.T, self.M), 1.0 / self.M, np.float32)
            hit = (a["expert_regimes"][None] == np.asarray(regime).reshape(B, 1, 1))
            hit = hit.astype(np.float32)
            s = hit.sum(axis=-1, keepdims=True)
            hit = np.where(s == 0, 1.0, hit).astype(np.float32)
            return hit / hit.sum(axis=-1, keepdims=True)
        if g.kind == "hajek":
            u = z @ a["k1z"] + y[..., None] * a["k1y"][:, None, :] + a["c1"][:, None, :]
            phi = _act(g.activation, u) @ a["k2"] + a["c2"][:, None, :]  # (B, T, M, D)
            v = phi.mean(axis=2, keepdims=True)  # (B, T, 1, D)
            c = (phi * v).sum(-1) / (np.sqrt((v * v).sum(-1)) + EPS)  # (B, T, M)
            logits = c / g.temperature
        elif g.kind == "router":
            if "r2" in a:
                hidden = np.maximum(np.einsum("bi,tih->bth", xf, a["r1"]) + a["rb1"], 0.0)
                logits = np.einsum("bth,thm->btm", hidden, a["r2"]) + a["rb2"]
            else:
                logits = np.einsum("bi,tim->btm", xf, a["r1"]) + a["rb1"]
        else:  # pragma: no cover - _stack_gate rejects others
            raise InputError("unknown gate kind", field="gate", got=g.kind)
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    def flat(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.window, self.n_features):
            raise InputError("window of the wrong shape", field="windows",
                             expected=f"(W, F) or (B, W, F) with W={self.window}, "
                             f"F={self.n_features}", got=tuple(x.shape))
        return x.reshape(x.shape[0], -1)[:, self._offset:]

    def predict(self, x: np.ndarray, regime: np.ndarray | None = None, gate: str = "hajek",
                batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) predictions in units and (B, T, M) weights."""
        xf_all = self.flat(x)
        preds, ws = [], []
        for s in range(0, len(xf_all), batch_size):
            xf = xf_all[s:s + batch_size]
            r = None if regime is None else np.asarray(regime)[s:s + batch_size]
            z, y = self.experts(xf)
            w = self.weights(gate, z, y, xf, r)
            preds.append((w * y).sum(-1) * self.y_std + self.y_mean)
            ws.append(w)
        return np.concatenate(preds), np.concatenate(ws)

    def _gate_args(self, name: str) -> tuple:
        g = self.gates[name]
        a = g.arrays
        f32 = np.float32
        k1z, k1y, c1 = self._empty3, self._empty2, self._empty2
        k2, c2, r1, rb1 = self._empty3, self._empty2, self._empty3, self._empty2
        regimes = np.zeros((self.T, self.M), np.int64)
        kh, dim = 1, 1
        if g.kind == "hajek":
            k1z, k1y, c1, k2, c2 = a["k1z"], a["k1y"], a["c1"], a["k2"], a["c2"]
            kh, dim = k2.shape[1], k2.shape[2]
        elif g.kind == "regime":
            regimes = a["expert_regimes"]
        elif g.kind == "router":
            if "r2" in a:
                return ()  # a router with a hidden layer runs on the numpy path
            r1, rb1 = a["r1"], a["rb1"]
        return (GATE_CODES[g.kind], k1z, k1y, c1, k2, c2, ACT_CODES[g.activation],
                1.0 / g.temperature, regimes, r1, rb1,
                np.zeros(kh, f32), np.zeros((self.M, dim), f32), np.zeros(dim, f32))

    def predict_one(self, window: np.ndarray, regime: int = -1, gate: str = "hajek"
                    ) -> tuple[np.ndarray, np.ndarray]:
        """One decision: (W, F) float32 window -> (T,) predictions in units and (T, M) weights,
        by one call of the compiled kernel (no allocation beyond the two outputs)."""
        xf = window.reshape(-1)[self._offset:]
        if xf.shape[0] != self.w1.shape[0] or xf.dtype != np.float32:
            raise InputError("window of the wrong size or type", field="window",
                             expected=f"float32 ({self.window}, {self.n_features})",
                             got=f"{window.dtype} {window.shape}")
        args = self._kernel_args.get(gate)
        if args is None:
            raise InputError("gate not in this mixture", field="gate",
                             expected=", ".join(self.gates), got=gate)
        if not args:
            y, w = self.predict(window[None], None if regime < 0 else np.array([regime]), gate)
            return y[0], w[0]
        (code, k1z, k1y, c1, k2, c2, gact, inv_tau, regimes, r1, rb1, ubuf, phibuf,
         vbuf) = args
        out_y = np.empty(self.T, np.float32)
        out_w = np.empty((self.T, self.M), np.float32)
        _fused_one(xf, self.w1, self.b1, self.w2, self.b2, self.wh, self.bh,
                   self.route_expert, self.route_output, ACT_CODES[self.activation], code,
                   k1z, k1y, c1, k2, c2, gact, inv_tau, regimes, regime, r1, rb1,
                   self.y_mean, self.y_std, self._hbuf, self._zbuf, self._ybuf, ubuf, phibuf,
                   vbuf, out_y, out_w)
        return out_y, out_w

    def predict_one_numpy(self, window: np.ndarray, regime: int = -1, gate: str = "hajek"
                          ) -> tuple[np.ndarray, np.ndarray]:
        """The same decision through the numpy batch path (for comparison and tests)."""
        xf = window.reshape(1, -1)[:, self._offset:]
        z, y = self.experts(xf)
        w = self.weights(gate, z, y, xf, None if regime < 0 else np.array([regime]))
        return (w[0] * y[0]).sum(-1) * self.y_std + self.y_mean, w[0]

    def gate_parameters(self, gate: str) -> int:
        return int(sum(a.size for k, a in self.gates[gate].arrays.items()
                       if k != "expert_regimes"))


def _stack_gate(name: str, states: list[dict[str, np.ndarray]], settings: dict) -> GateArrays:
    f32 = np.float32
    if name == "mean":
        return GateArrays("mean", {})
    if name == "regime":
        return GateArrays("regime", {"expert_regimes": np.stack(
            [np.asarray(s["expert_regimes"], np.int64) for s in states])})
    if name == "hajek":
        k1 = np.stack([s["kernel.0.weight"].T for s in states]).astype(f32)  # (T, z+1, k)
        return GateArrays("hajek", {
            "k1z": np.ascontiguousarray(k1[:, :-1]), "k1y": np.ascontiguousarray(k1[:, -1]),
            "c1": np.stack([s["kernel.0.bias"] for s in states]).astype(f32),
            "k2": np.ascontiguousarray(np.stack([s["kernel.2.weight"].T for s in states]), f32),
            "c2": np.stack([s["kernel.2.bias"] for s in states]).astype(f32)},
            activation=settings.get("activation", "tanh"),
            temperature=float(settings.get("temperature", 1.0)))
    if name == "router":
        if "net.weight" in states[0]:
            return GateArrays("router", {
                "r1": np.ascontiguousarray(np.stack([s["net.weight"].T for s in states]), f32),
                "rb1": np.stack([s["net.bias"] for s in states]).astype(f32)})
        return GateArrays("router", {
            "r1": np.ascontiguousarray(np.stack([s["net.0.weight"].T for s in states]), f32),
            "rb1": np.stack([s["net.0.bias"] for s in states]).astype(f32),
            "r2": np.ascontiguousarray(np.stack([s["net.2.weight"].T for s in states]), f32),
            "rb2": np.stack([s["net.2.bias"] for s in states]).astype(f32)})
    raise InputError("unknown gate", field="gate", expected="hajek, mean, router, regime",
                     got=name)
