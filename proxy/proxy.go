// Package proxy is the HTTP proxy in front of the application: it sends
// writes to the primary and gives read-your-writes on replicas. It arrives
// with replication; this file only names the package.
package proxy
