# compare.awk ALLOWED MODPROBE OURS: compares blocks.awk records of modprobe (second file) and of
# modbroker (third file), target by target, for the run named `run`. Output lines:
#   D TARGET OURS MODPROBE   a difference (fails the test)
#   A KIND TARGET            a difference an entry of the allowed list (first file) explains
#   S TARGET                 to be run one by one (batch mode): both printed nothing (the exit
#                            status tells blacklisted from no match), or every `every`-th target
#   C SAME ALLOWED DIFFERENT TOTAL
# Fields are tab-separated; a block's lines are joined by \037. An allowed entry is
# "KIND ARG RUN": it applies to runs whose name contains RUN (see the allowed file).
BEGIN { FS = OFS = "\t" }
FILENAME == ARGV[1] {
	if ($0 !~ /^#/ && split($0, f, " ") >= 3 && index(run, f[3])) allow[f[1], f[2]] = 1
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
function explained(t, ours, theirs,    n, m, i, j, l, o, seen, count, cycle) {
	# A path target (modprobe /dir/x.ko): refused, never looked up.
	if ((("path", t) in allow) && (ours == "" || ours == "exit 1")) return "path"
	# modprobe lists a module again where one probe list reaches it by two names: ours must be
	# modprobe's lines with some of its repeats of an allowed module's line left out (for an
	# allowed cycle target, any copy of a line modprobe prints twice).
	n = split(theirs, l, "\037")
	m = split(ours, o, "\037")
	for (i = 1; i <= n; i++) count[l[i]]++
	cycle = ("cycle", t) in allow
	for (i = j = 1; i <= n; i++) {
		if (j <= m && l[i] == o[j]) j++
		else if (!(cycle && count[l[i]] > 1) && !((l[i] in seen) && repeatable(l[i]))) return ""
		seen[l[i]] = 1
	}
	return j > m ? (cycle ? "cycle" : "repeats") : ""
}

function repeatable(line,    k, f) {
	for (k in allow) {
		split(k, f, SUBSEP)
		if (f[1] == "repeats" && index(line, "/" f[2] ".ko")) return 1
	}
	return 0
}
