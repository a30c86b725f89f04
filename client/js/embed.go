// Package presencedjs holds the browser module presenced.js and its demo
// page as files, so presenced serves them under /ui/ (no build step).
package presencedjs

import "embed"

// FS holds presenced.js and demo.html.
//
//go:embed presenced.js demo.html
var FS embed.FS
