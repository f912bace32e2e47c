# compare.awk ALLOWED MODPROBE OURS: compares blocks.awk records of modprobe (second file) and of
# modbroker (third file), target by target. Output lines:
#   D TARGET OURS MODPROBE   a difference (fails the test)
#   A KIND TARGET            a difference the allowed list (first file, "KIND ARG") explains
#   S TARGET                 to be run one by one (batch mode): both printed nothing (the exit
#                            status tells blacklisted from no match), or every `every`-th target
#   C SAME ALLOWED DIFFERENT TOTAL
# Fields are tab-separated; a block's lines are joined by \037.
BEGIN { FS = OFS = "\t" }
FILENAME == ARGV[1] {
	if ($0 !~ /^#/ && split($0, f, " ") >= 2) { allow[f[1], f[2]] = 1; if (f[1] == "relisted") relisted[f[2]] = 1 }
	next
}
FILENAME == ARGV[2] { mt[FNR] = $1; mb[FNR] = $2; next }
{
	if ($1 != mt[FNR]) { print "compare.awk: target " FNR " is " $1 " here, " mt[FNR] " for modprobe" > "/dev/stderr"; exit 2 }
	total++
	if ($2 == mb[FNR]) same++
	else if ((kind = explained($1, $2, mb[FNR])) != "") { print "A", kind, $1; allowed++ }
	else { print "D", $1, $2, mb[FNR]; different++ }
	if (every && (($2 == "" && mb[FNR] == "") || FNR % every == 0)) print "S", $1
}
END { print "C", same + 0, allowed + 0, different + 0, total + 0 }

# The kind of allowed difference that explains OURS against MODPROBE for target T, or "".
function explained(t, ours, theirs,    n, i, l, seen, kept) {
	# A path target (modprobe /dir/x.ko): refused, never looked up (README).
	if ((("path", t) in allow) && (ours == "" || ours == "exit 1")) return "path"
	# The known bug: an alias to a module without a file (README).
	if ((("nofile", t) in allow) && ours == "exit 1" && theirs == "exit 0") return "nofile"
	# modprobe lists a module again when a softdep cycle brings it back (README): drop its
	# repeats of a listed module's line, then the rest must be the same.
	n = split(theirs, l, "\037")
	kept = ""
	for (i = 1; i <= n; i++) {
		if ((l[i] in seen) && relisted_line(l[i])) continue
		seen[l[i]] = 1
		kept = kept (kept == "" ? "" : "\037") l[i]
	}
	return kept == ours && kept != theirs ? "relisted" : ""
}

function relisted_line(line,    m) {
	for (m in relisted) if (index(line, "/" m ".ko")) return 1
	return 0
}
