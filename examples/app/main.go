// Command app is a small web app for trying the litefs proxy: it keeps
// items in a SQLite database on the mount. POST /items (form value v) adds
// one, GET /items lists them, one "id value" per line.
//
//	go run ./examples/app -db /tmp/cluster/node1/mnt/app.db -addr 127.0.0.1:8081
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"log"
	"net/http"

	_ "github.com/mattn/go-sqlite3"
)

func main() {
	path := flag.String("db", "app.db", "SQLite database file, on the litefs mount")
	addr := flag.String("addr", "127.0.0.1:8081", "address to listen on (the proxy's target)")
	flag.Parse()
	db, err := sql.Open("sqlite3", *path+"?_busy_timeout=5000")
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("POST /items", func(w http.ResponseWriter, r *http.Request) {
		// The table is made by the first write: on a replica the
		// database is read-only, and writes never reach it through the
		// proxy.
		if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		res, err := db.Exec(`INSERT INTO items (v) VALUES (?)`, r.FormValue("v"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		id, _ := res.LastInsertId()
		fmt.Fprintf(w, "%d %s\n", id, r.FormValue("v"))
	})
	http.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.Query(`SELECT id, v FROM items ORDER BY id`)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			var v string
			if err := rows.Scan(&id, &v); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "%d %s\n", id, v)
		}
	})
	log.Printf("listening on %s, database %s", *addr, *path)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
