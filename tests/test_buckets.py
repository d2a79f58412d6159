from adaptive_sched.buckets import bucket_key, entry_key
from adaptive_sched.types import Backend, Shape, Stage


def test_decisions_share_an_entry_within_a_bucket_only():
    a, b = Shape(n=1, d=2048, kv_len=300), Shape(n=1, d=2048, kv_len=310)
    assert entry_key(Stage.ATTN, a, None) == entry_key(Stage.ATTN, b, None)
    assert entry_key(Stage.ATTN, a, None) != entry_key(Stage.ATTN, a, Backend.GPU)
    assert entry_key(Stage.ATTN, a, None) != entry_key(Stage.ATTN, Shape(n=1, d=2048, kv_len=400), None)


def test_a_short_chunk_is_never_keyed_as_a_long_prompt():
    # 40 new tokens over 472 cached keys attend to as many keys as a 512-token prompt
    chunk, prompt = Shape(n=40, d=2048, kv_len=472), Shape(n=512, d=2048)
    assert entry_key(Stage.ATTN, chunk, None) != entry_key(Stage.ATTN, prompt, None)
    # qkv without lookahead ignores the cache: the sequence length alone tells them apart
    assert entry_key(Stage.QKV, Shape(n=40, d=2048), None, False) != entry_key(Stage.QKV, prompt, None, False)


def test_qkv_ignores_the_cache_unless_it_plans_attention():
    short, long = Shape(n=1, d=2048, kv_len=10), Shape(n=1, d=2048, kv_len=5000)
    assert entry_key(Stage.QKV, short, None, lookahead=False) == entry_key(Stage.QKV, long, None, lookahead=False)
    assert entry_key(Stage.QKV, short, None) != entry_key(Stage.QKV, long, None)
    assert bucket_key(Stage.QKV, long, lookahead=False)[-1] == 0
