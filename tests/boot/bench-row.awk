# bench-row.awk - one row of the real-boot table from the summaries of one image, vCPU count and
# boot (stock or broker), one file per pair: "median (min-max)" of each figure.
#   awk -F= -v smp=N -v name=DIST-CASE -f bench-row.awk SUMMARY...
FNR == 1 { n++ }
{ v[n, $1] = $2 }
function sorted(key, a,    i, j, t, m) {
	m = 0
	for (i = 1; i <= n; i++) if ((i, key) in v) a[++m] = v[i, key] + 0
	for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return m
}
function median(key,    a, m) {
	m = sorted(key, a)
	if (m == 0) return "-"
	return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
function spread(key, fmt,    a, m) {
	m = sorted(key, a)
	if (m == 0) return "-"
	if (m == 1) return sprintf(fmt, a[1])
	return sprintf(fmt " (" fmt "–" fmt ")", median(key), a[1], a[m])
}
END {
	for (i = 1; i <= n; i++) v[i, "dup"] = v[i, "initramfs_r_EEXIST"] + v[i, "root_r_EEXIST"] + v[i, "initramfs_ebusy"] + v[i, "root_ebusy"]
	split(name, p, "-")
	img = (p[1] == "bookworm") ? "Debian 12, initramfs-tools" : "Debian 13, dracut host-only"
	for (i = 1; i <= n; i++) stalls += v[i, "guest_stalls"]
	printf "| %s | %s | %s | %d | %s / %s | %s / %s | %s | %s | %s | %s | %d |\n", img, smp, p[2], n,
		spread("initramfs_calls", "%d"), spread("root_calls", "%d"),
		spread("initramfs_client_runs", "%d"), spread("root_client_runs", "%d"), spread("dup", "%d"),
		spread("initramfs_last_end", "%.1f"), spread("root_last_end", "%.1f"), spread("multi_user_s", "%.1f"), stalls
}
