#!/usr/bin/env bash
# A small Frappe-shaped write workload for the demo and the compose stack: the SQL Frappe sends
# for new customers, invoice insert (parent + 3 child rows in one transaction), save (children
# deleted and re-inserted), submit, db_set without `modified`, and delete, at a steady rate.
#
# Usage: scripts/workload.sh   (settings from env)
#   WORKLOAD_HOST (127.0.0.1)  WORKLOAD_PORT (3306)  WORKLOAD_USER (root)  WORKLOAD_DB (site)
#   MYSQL_PWD (password, read by the mariadb client from the environment, never argv)
#   WORKLOAD_SOCKET (use a unix socket instead of host/port)
#   WORKLOAD_RATE   invoices per second (10)
#   WORKLOAD_SECONDS  stop after this many seconds (0 = until killed)
# One mariadb client connection carries the whole stream.
set -euo pipefail

HOST="${WORKLOAD_HOST:-127.0.0.1}"
PORT="${WORKLOAD_PORT:-3306}"
USER_="${WORKLOAD_USER:-root}"
DB="${WORKLOAD_DB:-site}"
RATE="${WORKLOAD_RATE:-10}"
SECONDS_="${WORKLOAD_SECONDS:-0}"
RUN="$(date +%s)"

if [ -n "${WORKLOAD_SOCKET:-}" ]; then
  CONN=(--socket="$WORKLOAD_SOCKET")
else
  CONN=(--host="$HOST" --port="$PORT")
fi

sleep_s="$(awk -v r="$RATE" 'BEGIN { if (r <= 0) r = 1; printf "%.4f", 1 / r }')"

generate() {
  local n=0 start now inv cust
  start="$(date +%s)"
  echo "SET time_zone='+00:00';"
  while :; do
    n=$((n + 1))
    inv="SINV-$RUN-$n"
    cust="CUST-$RUN-$(( (n + 9) / 10 ))"
    now="NOW(6)"
    if [ $(( n % 10 )) -eq 1 ]; then
      echo "INSERT INTO \`tabCustomer\` (name,creation,modified,modified_by,owner,customer_name,customer_group,territory) VALUES ('$cust',$now,$now,'Administrator','Administrator','Customer $cust','Commercial','All Territories');"
    fi
    echo "BEGIN;"
    echo "INSERT INTO \`tabSales Invoice\` (name,creation,modified,modified_by,owner,naming_series,customer,customer_name,posting_date,posting_time,due_date,currency,conversion_rate,total,net_total,grand_total,outstanding_amount,status) VALUES ('$inv',$now,$now,'Administrator','Administrator','SINV-.YYYY.-','$cust','Customer $cust',CURDATE(),CURTIME(6),CURDATE(),'INR',1,300,300,300,300,'Draft');"
    for i in 1 2 3; do
      echo "INSERT INTO \`tabSales Invoice Item\` (name,creation,modified,modified_by,owner,idx,item_code,item_name,qty,rate,amount,parent,parentfield,parenttype) VALUES ('$inv-i$i',$now,$now,'Administrator','Administrator',$i,'ITEM-$i','Item $i',1,100,100,'$inv','items','Sales Invoice');"
    done
    echo "COMMIT;"
    if [ $(( n % 3 )) -eq 0 ]; then
      # save: parent updated, children deleted and inserted again with a changed row
      echo "BEGIN;"
      echo "UPDATE \`tabSales Invoice\` SET modified=$now, total=400, net_total=400, grand_total=400, outstanding_amount=400 WHERE name='$inv';"
      echo "DELETE FROM \`tabSales Invoice Item\` WHERE parent='$inv' AND parenttype='Sales Invoice' AND parentfield='items';"
      for i in 1 2 3; do
        q=1; [ "$i" -eq 3 ] && q=2
        echo "INSERT INTO \`tabSales Invoice Item\` (name,creation,modified,modified_by,owner,idx,item_code,item_name,qty,rate,amount,parent,parentfield,parenttype) VALUES ('$inv-i$i',$now,$now,'Administrator','Administrator',$i,'ITEM-$i','Item $i',$q,100,$((q * 100)),'$inv','items','Sales Invoice');"
      done
      echo "COMMIT;"
    fi
    if [ $(( n % 5 )) -eq 0 ]; then
      echo "BEGIN;"
      echo "UPDATE \`tabSales Invoice\` SET docstatus=1, status='Unpaid', modified=$now WHERE name='$inv';"
      echo "UPDATE \`tabSales Invoice Item\` SET docstatus=1 WHERE parent='$inv' AND parenttype='Sales Invoice';"
      echo "COMMIT;"
    fi
    if [ $(( n % 7 )) -eq 0 ]; then
      echo "UPDATE \`tabSales Invoice\` SET remarks='db_set $n' WHERE name='$inv';"
    fi
    if [ $(( n % 20 )) -eq 1 ] && [ "$n" -gt 1 ]; then
      # delete a draft from earlier in this run (n-2 ≡ 19 mod 20 is never submitted)
      old="SINV-$RUN-$((n - 2))"
      echo "BEGIN;"
      echo "DELETE FROM \`tabSales Invoice Item\` WHERE parent='$old' AND parenttype='Sales Invoice';"
      echo "DELETE FROM \`tabSales Invoice\` WHERE name='$old';"
      echo "COMMIT;"
    fi
    if [ "$SECONDS_" -gt 0 ]; then
      now_s="$(date +%s)"
      [ $(( now_s - start )) -ge "$SECONDS_" ] && break
    fi
    sleep "$sleep_s"
  done
}

generate | mariadb --no-defaults "${CONN[@]}" --user="$USER_" --default-character-set=utf8mb4 "$DB"
