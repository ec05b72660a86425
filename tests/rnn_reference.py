"""Float64 NumPy transcriptions of the LN-LSTM (Ba et al. 2016, eqs. 20-22) and the LN-GRU, for the cell tests."""
import numpy as np

EPS = 1e-6


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def LN(a, gain, bias=0.0):
    """Ba et al. eqs. 3-4 (+ epsilon inside the root, as every implementation): per example over the units."""
    mu = a.mean(-1, keepdims=True)
    sigma = np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
    return gain / sigma * (a - mu) + bias


def lstm_reference(p, xs, ln):
    """Ba et al. eqs. 20-22 (ln=True) or the plain LSTM (ln=False). xs: (B, T, I) -> hs (B, T, H)."""
    H = p["recurrent_kernel"].shape[0]
    c = np.zeros((xs.shape[0], H))
    h = np.zeros((xs.shape[0], H))
    hs = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        if ln:
            a = (LN(h @ p["recurrent_kernel"], p["ln_recurrent"]["scale"])
                 + LN(x @ p["input_kernel"], p["ln_input"]["scale"]) + p["bias"])
        else:
            a = h @ p["recurrent_kernel"] + x @ p["input_kernel"] + p["bias"]
        f, i, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(LN(c, p["ln_cell"]["scale"], p["ln_cell"]["bias"]) if ln else c)
        hs.append(h)
    return np.stack(hs, 1)


def gru_reference(p, xs, ln):
    """LN-GRU: gates and candidate, input and recurrent terms normalised separately; h = (1-z) n + z h."""
    H = p["recurrent_kernel"].shape[0]
    h = np.zeros((xs.shape[0], H))
    norm = (lambda v, name: LN(v, p[name]["scale"])) if ln else (lambda v, name: v)
    hs = []
    for t in range(xs.shape[1]):
        wx, wh = xs[:, t] @ p["input_kernel"], h @ p["recurrent_kernel"]
        gates = sigmoid(norm(wx[:, :2 * H], "ln_input_gates") + norm(wh[:, :2 * H], "ln_recurrent_gates")
                        + p["bias"][:2 * H])
        r, z = gates[:, :H], gates[:, H:]
        n = np.tanh(norm(wx[:, 2 * H:], "ln_input_candidate") + r * norm(wh[:, 2 * H:], "ln_recurrent_candidate")
                    + p["bias"][2 * H:])
        h = (1.0 - z) * n + z * h
        hs.append(h)
    return np.stack(hs, 1)
