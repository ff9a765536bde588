import torch
import txwatch

model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(50)]

with txwatch.watch(model, optimizer, run="readme-example", project="examples",
                   config={"lr": 1e-3, "batch_size": 32}) as monitor:
    for step, (x, y) in enumerate(data * 4, start=1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.log(loss=loss)                      # a tensor is fine: no host sync is forced
        if step % 50 == 0:
            with torch.no_grad():
                val_loss = torch.nn.functional.cross_entropy(model(x), y)
            monitor.log(val_loss=val_loss)          # validation metrics at the current step
