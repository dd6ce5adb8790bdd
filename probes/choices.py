"""The names xlalign's options choose from, in a module that imports nothing: the command line lists them (and
answers ``--help``) without loading torch. The modules that implement each choice import them from here."""

# Sites (probes.model.sites): the linear projections of a block, and every component a Site can name.
LINEAR_COMPONENTS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMPONENTS = ("resid", "hidden", "attn_out", "mlp_out", "mlp_act", "mlp_gate", "head", "router", *LINEAR_COMPONENTS)

# Loading (probes.model.loading). hf: xlalign's hooks on the transformers modules (the reference); tl: a
# TransformerLens bridge's hook points; nnsight: the same hooks run from nnsight traces at the modules' Envoys.
BACKENDS = ("hf", "nnsight", "tl")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "sequential")

# Tokenisation defaults (probes.capture.Tokenization).
BATCH_SIZE = 16
MAX_LENGTH = 512
PADDING_SIDE = "right"

# Pooling (probes.capture.pooling) and the metrics of pooled activations (probes.analysis.alignment): what
# metrics=('all',) measures, in table order (langid_acc: language 'all'), and the neuron metrics each pooling of
# an mlp_gate store supports: NeuronXA's NASCA ("nas") and NAVCA ("nav"), and the majority-active overlap.
POOLINGS = ("mean", "weighted", "last", "max", "active", "nas", "nav")
ALL_METRICS = (
    "mexa",
    "retrieval_top1",
    "retrieval_top1_reverse",
    "strong_map",
    "matched_random_gap",
    "cka",
    "langid_acc",
)
NEURON_POOLINGS = {"nas": ("nasca",), "nav": ("navca",), "active": ("neuron_overlap", "neuron_overlap_retrieval")}

# Routing (probes.analysis.routing): expert importance, top-k renormalised weights or the softmax mean.
IMPORTANCE = ("weight", "prob")
