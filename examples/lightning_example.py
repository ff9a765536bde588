import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from txwatch.integrations.lightning import TxwatchCallback


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


data = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
trainer = L.Trainer(max_epochs=2, callbacks=[TxwatchCallback(run="lightning-example", project="examples")],
                    logger=False, enable_checkpointing=False, enable_progress_bar=False)
trainer.fit(Classifier(), DataLoader(data, batch_size=32), DataLoader(data, batch_size=64))
