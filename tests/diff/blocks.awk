# blocks.awk: splits --show-depends output into one record per target, "TARGET<TAB>BLOCK", the
# block's lines joined by \037, in the order of the target list (the first file).
#   batch output (-v sep=LINE): a separator line comes before each target's lines;
#   one-by-one output (-v ends=1): each target's lines end with the line "exit STATUS", kept.
NR == FNR { target[++n] = $0; next }
!ends && $0 == sep { if (i) print target[i] "\t" block; i++; block = ""; next }
!ends && !i { print FILENAME ": output before the first separator: " $0 > "/dev/stderr"; exit 2 }
{ block = block (block == "" ? "" : "\037") $0 }
ends && /^exit [0-9]+$/ { print target[++i] "\t" block; block = "" }
END {
	if (!ends && i) print target[i] "\t" block
	if (i != n) { print FILENAME ": " i " blocks for " n " targets" > "/dev/stderr"; exit 2 }
}
