"""FF3: time late_content and held_live on synthetic tables (not a pytest file).
Run: PYTHONPATH=. python docs/reviews/round17-attacks/perf_late_content.py ATTIC_ROWS LIVE_ROWS"""
import json, sqlite3, time, hashlib, sys
from cloudguard.manifest import resolutions
class S: pass
N = int(sys.argv[1]); M = int(sys.argv[2])
db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE attic (path TEXT, dot TEXT, e TEXT)")
db.execute("CREATE TABLE entries (path TEXT, dot TEXT, e TEXT, o TEXT)")
def ent(i, cs=None):
    e = {"t": "f", "h": hashlib.sha256(str(i).encode()).hexdigest(), "s": 1000 + i, "m": 1700000000,
         "x": 420, "o": hashlib.md5(str(i).encode()).hexdigest(), "a": [0, 1000], "k": "x" * 120,
         "g": 1, "lc": i, "wb": "a" * 16, "pt": 1700000000, "sig": "y" * 88}
    if cs: e["cs"] = cs
    return json.dumps(e)
# attic: N honest rows, a third of them carries (cs); X's 20000 late versions copying live content
db.executemany("INSERT INTO attic VALUES (?,?,?)", [(f"p{i}", f"{'b'*16}:{i}", ent(i, f"{'a'*16}:{i}" if i % 3 == 0 else None)) for i in range(N)])
db.executemany("INSERT INTO attic VALUES (?,?,?)", [(f"x{i}", f"{'x'*16}:{i+1}", ent(i)) for i in range(min(M, 20000))])
db.executemany("INSERT INTO entries VALUES (?,?,?,?)", [(f"p{i}", f"{'a'*16}:{i}", ent(i), "") for i in range(M)])
s = S(); s.db = db; s.cuts = {"x" * 16: 0}
t = time.perf_counter(); tags, sizes = resolutions.late_content(s); t1 = time.perf_counter() - t
print(f"late_content: attic {N}+{min(M,20000)} rows: {t1:.2f}s, {len(tags)} tags")
tag = next(iter(tags))
t = time.perf_counter()
for _ in range(100):
    resolutions.held_live(s, tag)
t2 = (time.perf_counter() - t) / 100
print(f"held_live: {M} live entries: {t2*1000:.1f} ms per call; a rename of a folder of 10000 such files: {t2*10000:.0f}s")
