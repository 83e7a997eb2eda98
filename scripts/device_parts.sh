# Sourced by scripts/device_*.sh: one file larger than a device call carries (64 MiB with the working tree) goes
# to the GPU machine in parts. Here it is cut into git-ignored folders PREFIX1..PREFIXN (one carried per call);
# there each part is kept under one folder until the last arrives, and the file is joined with its sha256 checked.
#
#   parts_split FILE PREFIX STEM FIRST_MIB REST_MIB   here: PREFIX1/STEM.{name,sha256,count,part01}, PREFIXk/STEM.partkk
#   parts_take PREFIX K IN                            there: PREFIXK/* copied into IN
#   parts_join IN STEM DIR                            there: the file joined into DIR; its path printed

parts_ignore() {  # /PREFIX*/ into git's exclude list (a worktree's too: .git may be a file there)
  local exclude
  exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) || return 0
  mkdir -p "$(dirname "$exclude")"
  grep -qx "/$1\*/" "$exclude" 2>/dev/null || echo "/$1*/" >> "$exclude"
}

parts_split() {
  local file=$1 prefix=$2 stem=$3 first=$(( $4 * 1048576 )) rest=$(( $5 * 1048576 ))
  local size k n tmp
  [ -f "$file" ] || { echo "parts_split: no file $file" >&2; return 1; }
  parts_ignore "$prefix"
  size=$(stat -c %s "$file")
  n=1; [ "$size" -gt "$first" ] && n=$(( 1 + (size - first + rest - 1) / rest ))
  mkdir -p "${prefix}1"
  basename "$file" > "${prefix}1/$stem.name"
  sha256sum "$file" | awk '{print $1}' > "${prefix}1/$stem.sha256"
  echo "$n" > "${prefix}1/$stem.count"
  head -c "$first" "$file" > "${prefix}1/$stem.part01"
  if [ "$n" -gt 1 ]; then
    tmp=$(mktemp -d)
    tail -c +$(( first + 1 )) "$file" | split -b "$rest" -d -a 2 --numeric-suffixes=2 - "$tmp/$stem.part"
    for (( k = 2; k <= n; k++ )); do
      mkdir -p "$prefix$k" && mv "$tmp/$stem.part$(printf %02d $k)" "$prefix$k/"
    done
    rm -rf "$tmp"
  fi
  du -sh "$prefix"[0-9]*
}

parts_take() {
  local prefix=$1 k=$2 in=$3
  [ -d "$prefix$k" ] || { echo "part $k is not here: carry $prefix$k with this call" >&2; return 1; }
  mkdir -p "$in" && cp "$prefix$k"/* "$in"/ && ls -la "$in" | tail -n +2 | awk '{print $5, $9}'
}

parts_join() {
  local in=$1 stem=$2 dir=$3 name out k n parts=()
  [ -f "$in/$stem.name" ] || { echo "part 1 has not arrived in $in" >&2; return 1; }
  n=$(cat "$in/$stem.count" 2>/dev/null || ls "$in/$stem".part* | wc -l)  # packs from before .count: what is there
  for (( k = 1; k <= n; k++ )); do
    parts+=("$in/$stem.part$(printf %02d $k)")
    [ -f "${parts[-1]}" ] || { echo "part $k of $n has not arrived in $in: take $k" >&2; return 1; }
  done
  name=$(cat "$in/$stem.name") && out="$dir/$name" && mkdir -p "$dir"
  cat "${parts[@]}" > "$out"
  [ "$(sha256sum "$out" | awk '{print $1}')" = "$(cat "$in/$stem.sha256")" ] \
    || { echo "$name: sha256 mismatch after joining $n parts" >&2; rm -f "$out"; return 1; }
  echo "$out"
}
