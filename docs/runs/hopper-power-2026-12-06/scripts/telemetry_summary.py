import csv, sys, statistics as st, datetime as dt, collections
tel, marks = sys.argv[1], sys.argv[2]
def ts(s): return dt.datetime.strptime(s.strip(), "%Y/%m/%d %H:%M:%S.%f")
rows = []
for r in csv.reader(open(tel)):
    if not r or r[0].startswith("timestamp") or len(r) < 6: continue
    try: rows.append((ts(r[0]), float(r[1].split()[0]), float(r[2].split()[0]), float(r[3].split()[0]), float(r[4]), r[5].strip()))
    except Exception as e: pass
m = [(ts(" ".join(l.split()[:2])), " ".join(l.split()[2:])) for l in open(marks)]
phases = [(m[i][1].replace(" start",""), m[i][0], m[i+1][0]) for i in range(0, len(m)-1, 2)]
for name, a, b in phases:
    sel = [r for r in rows if a <= r[0] <= b]
    busy = [r for r in sel if r[3] > 250]
    print(f"{name}: {len(sel)} samples, {len(busy)} above 250 W")
    for lab, s in (("all", sel), ("above 250 W", busy)):
        if not s: continue
        clk = [r[1] for r in s]; pw = [r[3] for r in s]; tmp = [r[4] for r in s]
        print(f"  {lab}: SM clock median {st.median(clk):.0f} MHz (min {min(clk):.0f}, max {max(clk):.0f}); power median {st.median(pw):.0f} W (max {max(pw):.0f}); temperature {min(tmp):.0f}-{max(tmp):.0f} C")
        print("   reasons:", collections.Counter(r[5] for r in s).most_common(6))
