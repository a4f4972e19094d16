#!/usr/bin/env python3
import requests
import json
import time
import asyncio

BASE_URL = __import__("os").environ.get("SI64_BASE_URL", "http://localhost:8000")
WALLET = "5mEvgLUE2MvNTSr9mGRo6zvL2M2Jng132sDCP4411FHZ"

async def test_contract_lifecycle():
    """Simulate complete contract lifecycle"""
    
    # Step 1: Create contract
    print("ðŸ“ Creating contract...")
    resp = requests.post(f"{BASE_URL}/api/rent", json={
        "wallet": WALLET,
        "tier": "M2",
        "duration_hours": 0.1,  # 6 minutes
        "tx_signature": "test_sig",
        "amount": 0.0001
    })
    contract = resp.json()
    contract_id = contract["contract_id"]
    print(f"âœ“ Contract created: {contract_id}")
    
    # Step 2: Simulate workload for 30 seconds
    print("\nâš™ï¸  Simulating workload...")
    for i in range(6):
        resp = requests.post(f"{BASE_URL}/api/metrics/{contract_id}", json={
            "cpu_percent": 45 + i*5,
            "memory_mb": 3500 + i*100,
            "disk_io_mbps": 25,
            "network_io_mbps": 5
        })
        data = resp.json()
        print(f"  Metric {i+1}: Used {data['cost_so_far']:.6f} SOL | Refund {data['refund_available']:.6f} SOL")
        await asyncio.sleep(5)
    
    # Step 3: Check status
    print("\nðŸ“Š Checking final status...")
    resp = requests.get(f"{BASE_URL}/api/contracts/{contract_id}")
    status = resp.json()
    print(f"  Prepaid: {status['prepaid_sol']} SOL")
    print(f"  Used: {status['used_sol']:.6f} SOL")
    print(f"  Refund: {status['refund_available']:.6f} SOL")
    
    # Step 4: Settle
    print("\nðŸ’° Settling contract...")
    resp = requests.post(f"{BASE_URL}/api/contracts/{contract_id}/settle")
    settlement = resp.json()
    print(f"âœ“ Settlement: {settlement['refund_sol']:.6f} SOL refunded")
    print(f"âœ“ TX Signature: {settlement['tx_signature']}")
    
    # Step 5: View ledger
    print("\nðŸ“‹ Viewing ledger...")
    resp = requests.get(f"{BASE_URL}/api/billing/ledger")
    ledger = resp.json()
    print(f"  Active contracts: {len(ledger['active_contracts'])}")
    print(f"  Completed settlements: {len(ledger['completed_settlements'])}")
    print(f"  Total revenue: {ledger['total_used']:.6f} SOL")

if __name__ == "__main__":
    asyncio.run(test_contract_lifecycle())
