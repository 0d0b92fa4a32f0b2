package policy

import "gopkg.in/yaml.v3"

// maxAliasNodes bounds the nodes YAML aliases add to a document: each
// alias is decoded as a copy of what its anchor names, so a few kilobytes
// of aliases to a list can stand for millions of nodes (N aliases of a
// policy whose list holds N items: N² to decode; 200 KB of them held a
// sidecar at start for nearly five minutes). yaml.v3 bounds aliases only
// when it decodes into Go values, not in the node tree the policy decoder
// walks. A file without aliases adds nothing; 100,000 nodes are more than
// any sharing of retryOn lists or whole specs needs, and decode in well
// under a second.
const maxAliasNodes = 100_000

// aliasGrowth returns the nodes that aliases add to the tree under n (a
// document's root), stopping at the first alias that takes the count past
// maxAliasNodes, which it returns too (nil while under). Each node's size
// with its aliases expanded is counted once: the walk is linear in the
// document's own nodes.
func aliasGrowth(n *yaml.Node) (int, *yaml.Node) {
	w := aliasWalk{size: map[*yaml.Node]int{}}
	w.expanded(n)
	return w.added, w.over
}

type aliasWalk struct {
	size  map[*yaml.Node]int // a node's size, its aliases expanded; -1 while counted
	added int
	over  *yaml.Node
}

func (w *aliasWalk) expanded(n *yaml.Node) int {
	if n == nil || w.over != nil {
		return 0
	}
	if s, ok := w.size[n]; ok {
		if s < 0 {
			return 0 // an anchor that contains its alias: yaml.v3 refuses it first
		}
		return s
	}
	w.size[n] = -1
	s := 1
	if n.Kind == yaml.AliasNode {
		// The alias stands for its anchor's node, which is also
		// counted where it stands.
		s = w.expanded(n.Alias)
		w.added += s
		if w.added > maxAliasNodes && w.over == nil {
			w.over = n
		}
	} else {
		for _, c := range n.Content {
			s += w.expanded(c)
		}
	}
	w.size[n] = s
	return s
}
